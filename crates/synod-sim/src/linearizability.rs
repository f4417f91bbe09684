//! A linearizability checker in the style of Porcupine: Wing & Gong's backtracking search over
//! the real-time order of calls and returns, with Lowe's memoization of (linearized set, state)
//! pairs so that equivalent branches are explored once.
//!
//! A history is a list of [`Operation`]s: who called, with what input, when it was called and,
//! if it returned, when and with what output. An operation that never returned (a client timed
//! out, a member crashed) is *indeterminate*: it may have taken effect at any point after its
//! call, or not at all, and its output is unknown. The history is linearizable if there is a
//! total order of the completed operations (plus any subset of the indeterminate ones) that
//! respects real time (an operation that returned before another was called comes first) and
//! that the sequential [`Model`] accepts.
//!
//! Histories of independent keys are checked separately ([`check_partitioned`]), which keeps the
//! search small: the cost is exponential only in the concurrency on one key.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash;
    type Input;
    type Output;

    fn init(&self) -> Self::State;

    /// Applies `input` to `state`. With `output` present, returns the next state only if the
    /// specification allows that output; with `output` absent (an indeterminate operation),
    /// returns the state as if the operation took effect.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One operation of a history. Times are any monotonic clock shared by all clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    pub client: u64,
    pub input: I,
    pub call: u64,
    /// `(return time, output)`, or `None` if the operation never returned.
    pub result: Option<(u64, O)>,
}

/// A history of operations for model `M`.
pub type History<M> = Vec<Operation<<M as Model>::Input, <M as Model>::Output>>;

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No valid order exists. `longest` lists the operations (by index) of the longest prefix
    /// the search could linearize, which is where to start looking.
    NotLinearizable {
        longest: Vec<usize>,
    },
    /// The search gave up after `steps` steps without deciding.
    Unknown {
        steps: u64,
    },
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Call,
    Return,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    kind: Kind,
    op: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A set of operation indexes, hashable for the memo table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(size: usize) -> Bits {
        Bits(vec![0; size.div_ceil(64)])
    }

    fn set(&mut self, index: usize) {
        self.0[index / 64] |= 1 << (index % 64);
    }

    fn clear(&mut self, index: usize) {
        self.0[index / 64] &= !(1 << (index % 64));
    }
}

/// Checks one history against `model`, giving up after `steps_max` search steps.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    steps_max: u64,
) -> Verdict {
    if history.is_empty() {
        return Verdict::Linearizable;
    }
    // Entries in time order; at equal times calls come first, which treats the two operations
    // as concurrent (the lenient reading of a tie).
    let mut order: Vec<(u64, u8, usize, Kind)> = Vec::with_capacity(history.len() * 2);
    for (index, op) in history.iter().enumerate() {
        order.push((op.call, 0, index, Kind::Call));
        if let Some((time, _)) = &op.result {
            assert!(
                *time >= op.call,
                "operation {index} returns before it is called"
            );
            order.push((*time, 1, index, Kind::Return));
        }
    }
    order.sort_by_key(|&(time, rank, index, _)| (time, rank, index));
    let mut entries: Vec<Entry> = order
        .iter()
        .enumerate()
        .map(|(position, &(_, _, op, kind))| Entry {
            kind,
            op,
            prev: position.checked_sub(1),
            next: (position + 1 < order.len()).then_some(position + 1),
        })
        .collect();
    let mut call_of = vec![0usize; history.len()];
    let mut return_of: Vec<Option<usize>> = vec![None; history.len()];
    for (position, entry) in entries.iter().enumerate() {
        match entry.kind {
            Kind::Call => call_of[entry.op] = position,
            Kind::Return => return_of[entry.op] = Some(position),
        }
    }
    let mut head = Some(0);
    let mut returns_left = return_of.iter().filter(|r| r.is_some()).count();

    let unlink = |entries: &mut Vec<Entry>, head: &mut Option<usize>, position: usize| {
        let Entry { prev, next, .. } = entries[position];
        match prev {
            Some(p) => entries[p].next = next,
            None => *head = next,
        }
        if let Some(n) = next {
            entries[n].prev = prev;
        }
    };
    let relink = |entries: &mut Vec<Entry>, head: &mut Option<usize>, position: usize| {
        let Entry { prev, next, .. } = entries[position];
        match prev {
            Some(p) => entries[p].next = Some(position),
            None => *head = Some(position),
        }
        if let Some(n) = next {
            entries[n].prev = Some(position);
        }
    };

    let mut state = model.init();
    let mut linearized = Bits::new(history.len());
    let mut memo: HashSet<(Bits, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut cursor = head;
    let mut steps = 0u64;

    while returns_left > 0 {
        steps += 1;
        if steps > steps_max {
            return Verdict::Unknown { steps };
        }
        // The next call to try; a return (or the end of the list) first means the operation
        // returning there cannot be placed after the choices made so far: undo the last one.
        let Some(position) = cursor.filter(|&p| matches!(entries[p].kind, Kind::Call)) else {
            match backtrack(&mut stack, &mut state, &mut linearized) {
                Some(op) => {
                    relink_op(&mut entries, &mut head, call_of[op], return_of[op], &relink);
                    if return_of[op].is_some() {
                        returns_left += 1;
                    }
                    cursor = entries[call_of[op]].next;
                    continue;
                }
                None => return Verdict::NotLinearizable { longest },
            }
        };
        let entry = entries[position];
        let op = &history[entry.op];
        let output = op.result.as_ref().map(|(_, output)| output);
        if let Some(next_state) = model.step(&state, &op.input, output) {
            let mut next_bits = linearized.clone();
            next_bits.set(entry.op);
            if memo.insert((next_bits.clone(), next_state.clone())) {
                stack.push((entry.op, state));
                state = next_state;
                linearized = next_bits;
                if let Some(r) = return_of[entry.op] {
                    unlink(&mut entries, &mut head, r);
                    returns_left -= 1;
                }
                unlink(&mut entries, &mut head, position);
                if stack.len() > longest.len() {
                    longest = stack.iter().map(|(op, _)| *op).collect();
                }
                cursor = head;
                continue;
            }
        }
        cursor = entry.next;
    }
    Verdict::Linearizable
}

fn backtrack<S>(
    stack: &mut Vec<(usize, S)>,
    state: &mut S,
    linearized: &mut Bits,
) -> Option<usize> {
    let (op, previous) = stack.pop()?;
    *state = previous;
    linearized.clear(op);
    Some(op)
}

/// Puts an operation's entries back, return first (it is later in the list), then call.
fn relink_op(
    entries: &mut Vec<Entry>,
    head: &mut Option<usize>,
    call: usize,
    ret: Option<usize>,
    relink: &impl Fn(&mut Vec<Entry>, &mut Option<usize>, usize),
) {
    if let Some(r) = ret {
        relink(entries, head, r);
    }
    relink(entries, head, call);
}

/// Checks a history of operations on many keys, one key at a time. `key_of` names the key an
/// operation touches. Returns the first non-linearizable key's verdict, or the overall one.
pub fn check_partitioned<M: Model, K: Eq + Hash + Clone>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    key_of: impl Fn(&M::Input) -> K,
    steps_max: u64,
) -> (Verdict, Option<K>)
where
    M::Input: Clone,
    M::Output: Clone,
{
    let mut partitions: HashMap<K, History<M>> = HashMap::new();
    let mut order: Vec<K> = Vec::new();
    for op in history {
        let key = key_of(&op.input);
        let part = partitions.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            Vec::new()
        });
        part.push(op.clone());
    }
    let mut unknown = None;
    for key in order {
        match check(model, &partitions[&key], steps_max) {
            Verdict::Linearizable => {}
            verdict @ Verdict::NotLinearizable { .. } => return (verdict, Some(key)),
            verdict @ Verdict::Unknown { .. } => unknown = Some((verdict, key)),
        }
    }
    match unknown {
        Some((verdict, key)) => (verdict, Some(key)),
        None => (Verdict::Linearizable, None),
    }
}

/// An operation on one etcd key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvInput {
    Put {
        key: String,
        value: String,
    },
    Get {
        key: String,
    },
    /// Compare-and-swap on the value (`None`: the key must be absent).
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
    Delete {
        key: String,
    },
}

impl KvInput {
    pub fn key(&self) -> &str {
        match self {
            KvInput::Put { key, .. }
            | KvInput::Get { key }
            | KvInput::Cas { key, .. }
            | KvInput::Delete { key } => key,
        }
    }
}

/// What a completed operation answered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvOutput {
    Done,
    Value(Option<String>),
    Swapped(bool),
}

/// The sequential specification of one key: its value or absence.
#[derive(Debug, Clone, Copy, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = Option<String>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Option<String> {
        None
    }

    fn step(
        &self,
        state: &Option<String>,
        input: &KvInput,
        output: Option<&KvOutput>,
    ) -> Option<Option<String>> {
        match (input, output) {
            (KvInput::Put { value, .. }, None | Some(KvOutput::Done)) => Some(Some(value.clone())),
            (KvInput::Delete { .. }, None | Some(KvOutput::Done)) => Some(None),
            (KvInput::Get { .. }, None) => Some(state.clone()),
            (KvInput::Get { .. }, Some(KvOutput::Value(seen))) => {
                (seen == state).then(|| state.clone())
            }
            (KvInput::Cas { expected, new, .. }, None) => Some(if state == expected {
                Some(new.clone())
            } else {
                state.clone()
            }),
            (KvInput::Cas { expected, new, .. }, Some(KvOutput::Swapped(swapped))) => {
                let matches = state == expected;
                (matches == *swapped).then(|| {
                    if matches {
                        Some(new.clone())
                    } else {
                        state.clone()
                    }
                })
            }
            _ => None,
        }
    }
}

/// Checks a history of etcd key operations, key by key, faster when it holds many indeterminate
/// writes (the calls cut off by a crash or a partition).
///
/// An indeterminate write whose value no completed operation ever observed (no read returned it,
/// no compare-and-swap expected it) is tried away first: the history without it is stricter, so
/// if that is linearizable, so is the whole (an indeterminate operation may always not have
/// happened). Only if the stricter history fails is the full one checked, and its verdict is the
/// answer. This keeps the search from trying every unobserved write at every point in time.
pub fn check_kv(
    history: &[Operation<KvInput, KvOutput>],
    steps_max: u64,
) -> (Verdict, Option<String>) {
    let key_of = |input: &KvInput| input.key().to_owned();
    let observed: HashSet<(&str, &str)> = history
        .iter()
        .flat_map(|op| {
            let key = op.input.key();
            let read = match &op.result {
                Some((_, KvOutput::Value(Some(value)))) => Some((key, value.as_str())),
                _ => None,
            };
            let expected = match &op.input {
                KvInput::Cas {
                    expected: Some(value),
                    ..
                } => Some((key, value.as_str())),
                _ => None,
            };
            read.into_iter().chain(expected)
        })
        .collect();
    let strict: Vec<Operation<KvInput, KvOutput>> = history
        .iter()
        .filter(|op| {
            let written = match &op.input {
                KvInput::Put { key, value }
                | KvInput::Cas {
                    key, new: value, ..
                } => Some((key.as_str(), value.as_str())),
                _ => None,
            };
            op.result.is_some() || written.is_none_or(|w| observed.contains(&w))
        })
        .cloned()
        .collect();
    if strict.len() < history.len() {
        let (verdict, key) = check_partitioned(&KvModel, &strict, key_of, steps_max);
        if verdict == Verdict::Linearizable {
            return (verdict, key);
        }
    }
    check_partitioned(&KvModel, history, key_of, steps_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(client: u64, call: u64, ret: Option<u64>, value: &str) -> Operation<KvInput, KvOutput> {
        Operation {
            client,
            input: KvInput::Put {
                key: "k".into(),
                value: value.into(),
            },
            call,
            result: ret.map(|t| (t, KvOutput::Done)),
        }
    }

    fn get(client: u64, call: u64, ret: u64, seen: Option<&str>) -> Operation<KvInput, KvOutput> {
        Operation {
            client,
            input: KvInput::Get { key: "k".into() },
            call,
            result: Some((ret, KvOutput::Value(seen.map(str::to_owned)))),
        }
    }

    fn cas(
        client: u64,
        call: u64,
        ret: u64,
        expected: Option<&str>,
        new: &str,
        swapped: bool,
    ) -> Operation<KvInput, KvOutput> {
        Operation {
            client,
            input: KvInput::Cas {
                key: "k".into(),
                expected: expected.map(str::to_owned),
                new: new.into(),
            },
            call,
            result: Some((ret, KvOutput::Swapped(swapped))),
        }
    }

    fn verdict(history: &[Operation<KvInput, KvOutput>]) -> bool {
        match check(&KvModel, history, 1_000_000) {
            Verdict::Linearizable => true,
            Verdict::NotLinearizable { .. } => false,
            Verdict::Unknown { steps } => panic!("undecided after {steps} steps"),
        }
    }

    #[test]
    fn sequential_histories_follow_the_model() {
        assert!(verdict(&[
            put(1, 0, Some(1), "a"),
            get(1, 2, 3, Some("a")),
            put(1, 4, Some(5), "b"),
            get(1, 6, 7, Some("b"))
        ]));
        assert!(verdict(&[get(1, 0, 1, None)]));
        assert!(!verdict(&[get(1, 0, 1, Some("a"))]), "a value nobody wrote");
    }

    #[test]
    fn a_stale_read_is_rejected() {
        // put(a) completes, put(b) completes, then a read returns a: stale.
        assert!(!verdict(&[
            put(1, 0, Some(1), "a"),
            put(1, 2, Some(3), "b"),
            get(2, 4, 5, Some("a"))
        ]));
    }

    #[test]
    fn a_lost_acknowledged_write_is_rejected() {
        assert!(!verdict(&[put(1, 0, Some(1), "a"), get(2, 2, 3, None)]));
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps the write: it may see the old or the new value.
        assert!(verdict(&[put(1, 0, Some(10), "a"), get(2, 1, 2, None)]));
        assert!(verdict(&[
            put(1, 0, Some(10), "a"),
            get(2, 1, 2, Some("a"))
        ]));
        // But two reads inside the write's window cannot see new then old.
        assert!(!verdict(&[
            put(1, 0, Some(10), "a"),
            get(2, 1, 2, Some("a")),
            get(3, 3, 4, None)
        ]));
    }

    #[test]
    fn reads_cannot_disagree_on_the_order_of_writes() {
        // Two concurrent writes; one reader sees a then b, another sees b then a.
        let history = [
            put(1, 0, Some(100), "a"),
            put(2, 0, Some(100), "b"),
            get(3, 10, 11, Some("a")),
            get(3, 12, 13, Some("b")),
            get(4, 14, 15, Some("b")),
            get(4, 16, 17, Some("a")),
        ];
        assert!(!verdict(&history));
    }

    #[test]
    fn compare_and_swap_follows_the_value() {
        assert!(verdict(&[
            put(1, 0, Some(1), "a"),
            cas(2, 2, 3, Some("a"), "b", true),
            get(1, 4, 5, Some("b"))
        ]));
        assert!(
            !verdict(&[put(1, 0, Some(1), "a"), cas(2, 2, 3, Some("a"), "b", false)]),
            "the swap had to succeed"
        );
        // Two clients swap from the same value concurrently: only one may win.
        assert!(!verdict(&[
            put(1, 0, Some(1), "a"),
            cas(2, 2, 5, Some("a"), "b", true),
            cas(3, 2, 5, Some("a"), "c", true)
        ]));
        assert!(verdict(&[
            put(1, 0, Some(1), "a"),
            cas(2, 2, 5, Some("a"), "b", true),
            cas(3, 2, 5, Some("a"), "c", false)
        ]));
    }

    #[test]
    fn indeterminate_operations_may_or_may_not_have_happened() {
        // A put that timed out may show up later, or never.
        assert!(verdict(&[put(1, 0, None, "a"), get(2, 5, 6, Some("a"))]));
        assert!(verdict(&[put(1, 0, None, "a"), get(2, 5, 6, None)]));
        // But not before it was called.
        assert!(!verdict(&[get(2, 0, 1, Some("a")), put(1, 5, None, "a")]));
        // And once seen, it cannot be unseen.
        assert!(!verdict(&[
            put(1, 0, None, "a"),
            get(2, 5, 6, Some("a")),
            get(2, 7, 8, None)
        ]));
    }

    /// `check_kv` decides histories full of unobserved indeterminate writes quickly, and its
    /// shortcut never hides a violation: an observed indeterminate write is still placed, and a
    /// stale read is still caught.
    #[test]
    fn kv_check_handles_many_indeterminate_writes() {
        let mut history = Vec::new();
        let mut time = 0;
        for round in 0..300u64 {
            history.push(put(1, time, Some(time + 2), &format!("ok{round}")));
            // Two writes cut off by a fault, never seen by anyone.
            history.push(put(100 + round, time + 1, None, &format!("lost{round}a")));
            history.push(put(1000 + round, time + 1, None, &format!("lost{round}b")));
            history.push(get(2, time + 3, time + 4, Some(&format!("ok{round}"))));
            time += 10;
        }
        let (verdict, _) = check_kv(&history, 100_000);
        assert_eq!(verdict, Verdict::Linearizable);
        // An indeterminate write that a read saw must still fit.
        history.push(put(5000, time, None, "seen"));
        history.push(get(2, time + 5, time + 6, Some("seen")));
        assert_eq!(check_kv(&history, 1_000_000).0, Verdict::Linearizable);
        // A read of a value older than an acknowledged write is caught, unobserved indeterminate
        // writes around it or not.
        let stale = [
            put(1, 0, Some(1), "old"),
            put(3, 1, None, "lost-a"),
            put(4, 2, None, "lost-b"),
            put(1, 2, Some(3), "new"),
            get(2, 4, 5, Some("old")),
        ];
        assert!(matches!(
            check_kv(&stale, 1_000_000).0,
            Verdict::NotLinearizable { .. }
        ));
        // "seen" took effect before the first read of it, so reading it again after a newer
        // acknowledged write is stale. Proving that means trying every placement of the 600
        // unobserved writes, which may exhaust the budget: the answer is then Unknown, never
        // Linearizable.
        history.push(put(1, time + 7, Some(time + 8), "newest"));
        history.push(get(2, time + 9, time + 10, Some("seen")));
        assert_ne!(check_kv(&history, 1_000_000).0, Verdict::Linearizable);
    }

    #[test]
    fn partitions_are_checked_per_key() {
        let on = |key: &str, op: Operation<KvInput, KvOutput>| Operation {
            input: match op.input {
                KvInput::Put { value, .. } => KvInput::Put {
                    key: key.into(),
                    value,
                },
                KvInput::Get { .. } => KvInput::Get { key: key.into() },
                other => other,
            },
            ..op
        };
        let history = vec![
            on("x", put(1, 0, Some(1), "a")),
            on("y", put(2, 0, Some(1), "b")),
            on("x", get(3, 2, 3, Some("a"))),
            on("y", get(3, 4, 5, None)),
        ];
        let (verdict, key) = check_partitioned(
            &KvModel,
            &history,
            |input| input.key().to_owned(),
            1_000_000,
        );
        assert!(matches!(verdict, Verdict::NotLinearizable { .. }));
        assert_eq!(key.as_deref(), Some("y"), "the lost write on y is found");
    }

    /// Many concurrent clients on one key with a valid history stay fast thanks to memoization.
    #[test]
    fn a_large_valid_history_is_decided_quickly() {
        let mut history = Vec::new();
        let mut time = 0;
        let mut last = None;
        for round in 0..200u64 {
            // Five overlapping writers, then a read that sees the last of them.
            for client in 0..5 {
                history.push(put(
                    client,
                    time,
                    Some(time + 10),
                    &format!("{round}-{client}"),
                ));
            }
            last = Some(format!("{round}-4"));
            history.push(put(
                9,
                time + 11,
                Some(time + 12),
                last.as_deref().expect("set"),
            ));
            history.push(get(7, time + 13, time + 14, last.as_deref()));
            time += 20;
        }
        assert!(last.is_some());
        assert!(verdict(&history));
    }
}
