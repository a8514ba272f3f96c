//! KV cache tiers: the `medium` strings vLLM and its connectors put on `BlockStored` /
//! `BlockRemoved`, mapped to the three tiers the router prices.
//!
//! | tier | media (case-insensitive) | who sends it |
//! |---|---|---|
//! | `GPU` | absent, `GPU`, `CUDA`, `DEVICE`, `G1` | vLLM's own prefix cache; KVBM device pool |
//! | `CPU` | `CPU`, `CPU_PINNED`, `CPU_TIER1`, `HOST`, `HOST_PINNED`, `HOSTPINNED`, `DRAM`, `G2` | OffloadingConnector (`CPU`), LMCache / Mooncake (`cpu`), KVBM host pool |
//! | `DISK` | `CPU_TIER2`, `STORAGE`, `DISK`, `FS`, `NVME`, `LOCAL_DISK`, `SSD`, `G3` | OffloadingConnector disk / tiering (`Disk` ≤ 0.25, `FS` 0.26, `STORAGE` ≥ 0.27), KVBM disk pool |
//!
//! A block is the worker's own only when its `locality` (vLLM ≥ 0.26) is absent or `LOCAL`; any
//! other locality (`REMOTE`, shared pools) and the object store (`OBJ`, `G4`) are not attributable
//! to one worker and are dropped (counted as `remote_medium`). Any other medium is dropped and
//! counted as `unknown_medium`: taking it for the GPU would credit a worker with a prefix it
//! must first load from who knows where.

/// A tier the router knows how to price; the discriminant is its rank (lower is faster).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Gpu = 0,
    Cpu = 1,
    Disk = 2,
}

/// Number of [`Tier`]s.
pub const TIERS: usize = 3;

impl Tier {
    pub const ALL: [Tier; TIERS] = [Tier::Gpu, Tier::Cpu, Tier::Disk];

    /// The canonical name (what the index and the APIs show).
    pub fn name(self) -> &'static str {
        match self {
            Tier::Gpu => "GPU",
            Tier::Cpu => "CPU",
            Tier::Disk => "DISK",
        }
    }

    /// The tier of a canonical name (as [`Tier::name`] gives it).
    pub fn from_name(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// Where an event's blocks live, as far as routing is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On this tier of the sending worker.
    Local(Tier),
    /// Somewhere not owned by the sending worker (a remote or shared store).
    Remote,
    /// A medium this table does not know.
    Unknown,
}

impl Placement {
    /// The skip reason of a placement the index does not take.
    pub fn skip_reason(self) -> Option<&'static str> {
        match self {
            Placement::Local(_) => None,
            Placement::Remote => Some("remote_medium"),
            Placement::Unknown => Some("unknown_medium"),
        }
    }
}

/// Longest medium name matched (longer ones are unknown without a copy).
const MAX_MEDIUM: usize = 16;

/// The placement of an event's `medium` and `locality` (see the module docs).
pub fn classify(medium: Option<&str>, locality: Option<&str>) -> Placement {
    if let Some(l) = locality {
        if !l.eq_ignore_ascii_case("LOCAL") {
            return Placement::Remote;
        }
    }
    let Some(m) = medium else {
        return Placement::Local(Tier::Gpu);
    };
    if m.len() > MAX_MEDIUM {
        return Placement::Unknown;
    }
    let mut buf = [0u8; MAX_MEDIUM];
    let up = &mut buf[..m.len()];
    up.copy_from_slice(m.as_bytes());
    up.make_ascii_uppercase();
    match &*up {
        b"GPU" | b"CUDA" | b"DEVICE" | b"G1" => Placement::Local(Tier::Gpu),
        b"CPU" | b"CPU_PINNED" | b"CPU_TIER1" | b"HOST" | b"HOST_PINNED" | b"HOSTPINNED"
        | b"DRAM" | b"G2" => Placement::Local(Tier::Cpu),
        b"CPU_TIER2" | b"STORAGE" | b"DISK" | b"FS" | b"NVME" | b"LOCAL_DISK" | b"SSD" | b"G3" => {
            Placement::Local(Tier::Disk)
        }
        b"OBJ" | b"G4" | b"REMOTE" => Placement::Remote,
        _ => Placement::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_medium_maps() {
        for (m, t) in [
            ("GPU", Tier::Gpu),
            ("gpu", Tier::Gpu),
            ("CPU", Tier::Cpu),
            ("cpu", Tier::Cpu),
            ("CPU_PINNED", Tier::Cpu),
            ("CPU_TIER1", Tier::Cpu),
            ("HostPinned", Tier::Cpu),
            ("CPU_TIER2", Tier::Disk),
            ("STORAGE", Tier::Disk),
            ("Disk", Tier::Disk),
            ("FS", Tier::Disk),
        ] {
            assert_eq!(classify(Some(m), None), Placement::Local(t), "{m}");
            assert_eq!(classify(Some(m), Some("LOCAL")), Placement::Local(t), "{m}");
            assert_eq!(classify(Some(m), Some("local")), Placement::Local(t), "{m}");
        }
        assert_eq!(classify(None, None), Placement::Local(Tier::Gpu));
    }

    #[test]
    fn unknown_and_remote_are_never_gpu() {
        for m in ["", "TPU", "HBM2", "a-very-long-medium-name-indeed", "ÉCPU"] {
            assert_eq!(classify(Some(m), None), Placement::Unknown, "{m}");
        }
        assert_eq!(classify(Some("OBJ"), None), Placement::Remote);
        assert_eq!(classify(Some("STORAGE"), Some("REMOTE")), Placement::Remote);
        assert_eq!(classify(None, Some("SHARED")), Placement::Remote);
        assert_eq!(Placement::Unknown.skip_reason(), Some("unknown_medium"));
    }

    #[test]
    fn names_round_trip() {
        for t in Tier::ALL {
            assert_eq!(Tier::from_name(t.name()), Some(t));
        }
        assert_eq!(Tier::from_name("cpu"), None);
    }
}
