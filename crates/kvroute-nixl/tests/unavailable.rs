//! Without NIXL's library the crate reports why, as a typed error, and never aborts.

use kvroute_nixl::{availability, Agent, NixlErrorKind};

#[test]
fn an_empty_folder_is_unavailable_not_an_abort() {
    let dir = std::env::temp_dir().join(format!("kvroute-nixl-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = Agent::new("nobody", "UCX", Some(&dir))
        .err()
        .expect("no library there");
    assert_eq!(err.kind, NixlErrorKind::Unavailable);
    assert!(err
        .to_string()
        .starts_with("KVR_NIXL_UNAVAILABLE: NIXL not available: no libnixl_capi.so in "));
    assert!(availability(Some(&dir)).is_err());
    let missing = dir.join("not-there");
    assert_eq!(
        Agent::new("nobody", "UCX", Some(&missing))
            .err()
            .unwrap()
            .kind,
        NixlErrorKind::Unavailable
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_names_are_invalid_input() {
    assert_eq!(
        Agent::new("", "UCX", None).err().unwrap().kind,
        NixlErrorKind::InvalidInput
    );
    assert_eq!(
        Agent::new("a\0b", "UCX", None).err().unwrap().kind,
        NixlErrorKind::InvalidInput
    );
}
