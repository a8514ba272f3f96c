//! What the front knows of the fleet, told by the JS gateway (which owns the registry, the
//! admission queue and the suspects): per model, its scheduler, tokenizer and targets; per
//! target, the requests in flight through either lane; the workers under a failure cooldown; the
//! models with requests waiting in JS's queue. A model the JS side did not hand over (not
//! serving, disaggregated, no plain `http://` worker...) is not here, and its requests go to JS.
//!
//! `plan` is JS's admission and exclusion rules (exchange.ts `route`, admission.ts `full`) for a
//! request's first attempt: full targets, then suspects, are left out while some other target
//! remains; when every target is full the request goes to JS, whose queue holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use kvroute_core::scheduler::{Mode, Scheduler};
use kvroute_tokenizer::ModelTokenizer;

/// A model's scheduler, shared with the JS thread's router (which locks it for its own calls).
pub type SharedScheduler = Arc<Mutex<Scheduler>>;

/// Locks a shared scheduler. A poisoned lock is taken anyway: the panics the scheduler can raise
/// are bugs its tests catch, and refusing every later request would turn one into an outage.
pub fn lock_scheduler(s: &SharedScheduler) -> MutexGuard<'_, Scheduler> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a worker is reached: `http://authority` plus a path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub authority: String,
    pub prefix: String,
}

impl Origin {
    /// A plain `http://host:port[/prefix]` URL; anything else (https, userinfo) is not the
    /// front's to reach.
    pub fn parse(url: &str) -> Option<Origin> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        Some(Origin {
            authority: authority.to_string(),
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
}

/// One (worker, DP rank) of a model.
#[derive(Debug, Clone)]
pub struct Target {
    /// The scheduler's target id.
    pub tid: u32,
    pub worker: Arc<str>,
    pub dp_rank: u32,
    pub origin: Arc<Origin>,
    /// Send vLLM's `X-data-parallel-rank` (the process hosts several ranks behind one port).
    pub rank_header: bool,
    /// Registered and serving (JS's FleetView); others are never chosen.
    pub serving: bool,
}

/// A model the front routes itself.
pub struct Model {
    pub name: String,
    pub sched: SharedScheduler,
    /// Keys text and chat; none: only token-id prompts stay in the front.
    pub tokenizer: Option<Arc<ModelTokenizer>>,
    pub block_size: u32,
    pub mode: Mode,
    pub targets: Vec<Target>,
}

impl Model {
    pub fn target(&self, tid: u32) -> Option<&Target> {
        self.targets.iter().find(|t| t.tid == tid)
    }
}

/// A first attempt's model and the targets it must not go to.
pub struct Plan {
    pub model: Arc<Model>,
    pub exclude: Vec<u32>,
}

#[derive(Default)]
struct State {
    models: HashMap<String, Arc<Model>>,
    /// Worker -> end of its cooldown.
    suspects: HashMap<String, Instant>,
    /// (worker, rank) -> requests in flight through JS / through the front (keys share the
    /// targets' `Arc<str>`, so the per-request lookups allocate nothing).
    js_inflight: HashMap<(Arc<str>, u32), u32>,
    front_inflight: HashMap<(Arc<str>, u32), u32>,
    /// Model -> requests waiting in JS's queue.
    queued: HashMap<String, u32>,
}

pub struct Fleet {
    state: Mutex<State>,
    /// Requests in flight per target bound (admission's `maxActivePerWorker`).
    max_active: u32,
}

impl Fleet {
    pub fn new(max_active: u32) -> Fleet {
        Fleet {
            state: Mutex::default(),
            max_active,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_model(&self, model: Model) {
        self.state()
            .models
            .insert(model.name.clone(), Arc::new(model));
    }

    pub fn remove_model(&self, name: &str) {
        self.state().models.remove(name);
    }

    /// The tokenizer of some model (the body is read with it before its model is known; a body
    /// naming a model with another tokenizer is read again with that one).
    pub fn any_tokenizer(&self) -> Option<Arc<ModelTokenizer>> {
        self.state()
            .models
            .values()
            .find_map(|m| m.tokenizer.clone())
    }

    pub fn model(&self, name: &str) -> Option<Arc<Model>> {
        self.state().models.get(name).cloned()
    }

    /// The worker is avoided until `until` (JS marked it, or the front saw it fail).
    pub fn set_suspect(&self, worker: &str, until: Instant) {
        let mut s = self.state();
        let now = Instant::now();
        s.suspects.retain(|_, t| *t > now);
        s.suspects.insert(worker.to_string(), until);
    }

    pub fn set_js_inflight(&self, worker: &str, dp_rank: u32, n: u32) {
        let mut s = self.state();
        if n == 0 {
            s.js_inflight.remove(&(Arc::from(worker), dp_rank));
        } else {
            s.js_inflight.insert((Arc::from(worker), dp_rank), n);
        }
    }

    pub fn set_queued(&self, model: &str, n: u32) {
        let mut s = self.state();
        if n == 0 {
            s.queued.remove(model);
        } else {
            s.queued.insert(model.to_string(), n);
        }
    }

    /// Requests the front has in flight on a target.
    pub fn front_inflight(&self, worker: &str, dp_rank: u32) -> u32 {
        let s = self.state();
        s.front_inflight
            .get(&(Arc::from(worker), dp_rank))
            .copied()
            .unwrap_or(0)
    }

    /// The first attempt's exclusions, or None: JS takes the request (model not handed over,
    /// requests already queued for it, every serving target full, or none serving).
    pub fn plan(&self, name: &str) -> Option<Plan> {
        let s = self.state();
        let model = s.models.get(name)?.clone();
        if s.queued.contains_key(name) {
            return None;
        }
        let max = self.max_active;
        let now = Instant::now();
        let mut others = Vec::new();
        let mut full = Vec::new();
        let mut suspects = Vec::new();
        let mut serving = 0usize;
        for t in &model.targets {
            if !t.serving {
                others.push(t.tid);
                continue;
            }
            serving += 1;
            let key = (t.worker.clone(), t.dp_rank);
            let active = s.js_inflight.get(&key).copied().unwrap_or(0)
                + s.front_inflight.get(&key).copied().unwrap_or(0);
            if active >= max {
                full.push(t.tid);
            }
            if s.suspects.get(&*t.worker).is_some_and(|until| *until > now) {
                suspects.push(t.tid);
            }
        }
        if serving == 0 || full.len() == serving {
            return None;
        }
        // exchange.ts `route`: busy and suspect targets are still better than none.
        let left = |extra: &[&Vec<u32>]| {
            let mut all: Vec<u32> = extra.iter().flat_map(|v| v.iter().copied()).collect();
            all.sort_unstable();
            all.dedup();
            let covered = model
                .targets
                .iter()
                .filter(|t| t.serving && all.binary_search(&t.tid).is_ok())
                .count();
            (covered < serving).then_some(all)
        };
        let exclude = left(&[&others, &full, &suspects])
            .or_else(|| left(&[&others, &suspects]))
            .or_else(|| left(&[&others]))?;
        Some(Plan { model, exclude })
    }

    /// A request of the front's went to a target.
    pub fn take(&self, worker: &Arc<str>, dp_rank: u32) {
        *self
            .state()
            .front_inflight
            .entry((worker.clone(), dp_rank))
            .or_insert(0) += 1;
    }

    /// It left the target.
    pub fn release(&self, worker: &Arc<str>, dp_rank: u32) {
        let mut s = self.state();
        let key = (worker.clone(), dp_rank);
        if let Some(n) = s.front_inflight.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                s.front_inflight.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            Origin::parse("http://127.0.0.1:8000"),
            Some(Origin {
                authority: "127.0.0.1:8000".into(),
                prefix: String::new()
            })
        );
        assert_eq!(
            Origin::parse("http://w:1/vllm/").unwrap().prefix,
            "/vllm".to_string()
        );
        assert_eq!(Origin::parse("https://w:1"), None);
        assert_eq!(Origin::parse("http://u:p@w:1"), None);
        assert_eq!(Origin::parse("http:///x"), None);
    }
}
