//! The virtual replay's engines and its agenda in one place: N [`SimEngine`]s stepped on one
//! discrete-event clock, with the replay's other timed events (KV event delivery, and the
//! caller's own kinds: metrics scrapes, timeline samples) in the same queue, so that a step end
//! that only samples tokens nobody needs to hear about never leaves Rust.
//!
//! The agenda is the TS replay's `EventQueue` (ts/replay/event-queue.ts): a min-heap on
//! (time, insertion order), so ties go in the order events were scheduled, and a run is a pure
//! function of its inputs. Events are pushed in the order the TS replay pushes them (a step end:
//! the delivery of its KV batch, then the deliveries of batches flushed while scheduling the next
//! step, then the next step's end), so both replay the same events in the same order.
//!
//! [`SimFleet::run`] pops events up to a time (the caller's next arrival) and returns to the
//! caller only for what it must act on: a step with a first token or a finish, an engine going
//! idle, or one of the caller's own events. The rest goes to the caller's handler as it happens
//! ([`Notice`]): KV event batches, `event_delay_ms` after their step, and the progress of a
//! step whose only news for the router is tokens that complete a block.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{SimEngine, StepOutput};

/// A step of the engine named by the event ends.
pub const STEP_END: u32 = 0;
/// The engine's oldest undelivered KV event batch reaches the router.
pub const DELIVER: u32 = 1;

#[derive(Debug, Clone, Copy)]
struct Event {
    t: f64,
    seq: u64,
    kind: u32,
    worker: u32,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    /// Reversed (BinaryHeap is a max-heap): the earliest (time, seq) is the greatest.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .t
            .total_cmp(&self.t)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// What [`SimFleet::run`] hands its caller's handler without returning.
#[derive(Debug, Clone, Copy)]
pub enum Notice<'a> {
    /// Engine `engine`'s oldest undelivered KV event batch (keyed layout) reaches the router.
    Batch {
        engine: u32,
        ops: &'a [u32],
        keys: &'a [u64],
    },
    /// Request `handle` has `num_output` tokens, a whole number of blocks (the router's
    /// `tokens`); only for a step with no first token and no finish.
    Tokens { handle: u32, num_output: u32 },
}

/// Why [`SimFleet::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// No event is due at or before `until` (the caller's next arrival is next).
    Until,
    /// A step ended with outputs for the router (`outputs`) or an engine went idle.
    Outputs,
    /// One of the caller's events (its kind, >= 2) is due now.
    Event(u32),
}

pub struct SimFleet {
    engines: Vec<SimEngine>,
    heap: BinaryHeap<Event>,
    seq: u64,
    busy: Vec<bool>,
    stepping: u32,
    now: f64,
    event_delay_ms: f64,
    block_size: u32,
    /// The outputs the router hears about, of the latest [`Stop::Outputs`]: (engine, output).
    pub outputs: Vec<(u32, StepOutput)>,
    step_out: Vec<StepOutput>,
}

impl SimFleet {
    /// `event_delay_ms` must be > 0 (a batch delivered at its step's end is applied in the
    /// middle of the step's handling, which this agenda does not model).
    pub fn new(engines: Vec<SimEngine>, block_size: u32, event_delay_ms: f64) -> Self {
        let n = engines.len();
        SimFleet {
            engines,
            heap: BinaryHeap::new(),
            seq: 0,
            busy: vec![false; n],
            stepping: 0,
            now: 0.0,
            event_delay_ms,
            block_size,
            outputs: Vec::new(),
            step_out: Vec::new(),
        }
    }

    pub fn engine(&self, w: usize) -> Option<&SimEngine> {
        self.engines.get(w)
    }

    pub fn engine_mut(&mut self, w: usize) -> Option<&mut SimEngine> {
        self.engines.get_mut(w)
    }

    pub fn len(&self) -> usize {
        self.engines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.engines.is_empty()
    }

    /// The simulated time of the latest event popped (or kick).
    pub fn now(&self) -> f64 {
        self.now
    }

    /// Engines with a step in progress.
    pub fn stepping(&self) -> u32 {
        self.stepping
    }

    /// Schedules one of the caller's events (kind >= 2) at `t`.
    pub fn push(&mut self, t: f64, kind: u32, worker: u32) {
        self.heap.push(Event {
            t,
            seq: self.seq,
            kind,
            worker,
        });
        self.seq += 1;
    }

    /// Starts a step of engine `w` at `now` unless it is stepping already (a request arrived).
    pub fn kick(&mut self, w: u32, now: f64) {
        self.now = now;
        if !self.busy[w as usize] {
            self.begin(w);
        }
    }

    /// Schedules engine `w`'s next step at `self.now` (the TS replay's `kick`).
    fn begin(&mut self, w: u32) {
        let (d, flushed) = self.engines[w as usize].begin_step(self.now);
        self.delivered_later(w, flushed);
        let was = self.busy[w as usize];
        self.busy[w as usize] = d.is_some();
        match (was, d.is_some()) {
            (false, true) => self.stepping += 1,
            (true, false) => self.stepping -= 1,
            _ => {}
        }
        if let Some(d) = d {
            self.push(self.now + d, STEP_END, w);
        }
    }

    fn delivered_later(&mut self, w: u32, batches: u32) {
        for _ in 0..batches {
            self.push(self.now + self.event_delay_ms, DELIVER, w);
        }
    }

    /// Pops and handles events due at or before `until` (see [`Stop`]); `on` gets the
    /// [`Notice`]s, in event order.
    pub fn run(&mut self, until: f64, on: &mut impl FnMut(Notice<'_>)) -> Stop {
        self.outputs.clear();
        loop {
            let Some(top) = self.heap.peek() else {
                return Stop::Until;
            };
            if top.t > until {
                return Stop::Until;
            }
            let e = self.heap.pop().expect("peeked");
            self.now = e.t;
            match e.kind {
                STEP_END => {
                    let w = e.worker;
                    let mut out = std::mem::take(&mut self.step_out);
                    out.clear();
                    let flushed = self.engines[w as usize].end_step(&mut out);
                    self.delivered_later(w, flushed);
                    self.begin(w);
                    let b = self.block_size;
                    let mut starts_or_ends = false;
                    for o in &out {
                        let n = o.num_output;
                        let edge = n == 1 || o.finished;
                        starts_or_ends |= edge;
                        if edge || n / b != (n - 1) / b {
                            self.outputs.push((w, *o));
                        }
                    }
                    self.step_out = out;
                    if starts_or_ends || !self.busy[w as usize] {
                        return Stop::Outputs;
                    }
                    // Only blocks completed: told here, in the step's order, without returning.
                    for &(_, o) in &self.outputs {
                        on(Notice::Tokens {
                            handle: o.handle,
                            num_output: o.num_output,
                        });
                    }
                    self.outputs.clear();
                }
                DELIVER => {
                    let w = e.worker;
                    self.engines[w as usize].take_batch(|ops, keys| {
                        on(Notice::Batch {
                            engine: w,
                            ops,
                            keys,
                        })
                    });
                }
                kind => return Stop::Event(kind),
            }
        }
    }
}
