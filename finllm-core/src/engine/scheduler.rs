//! The scheduler thread: admits waiting requests, builds each step's batch, runs it and hands
//! every request its token.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::metrics::{Gauges, Outcome};
use super::prefix::{Plan, PrefixStore};
use super::stream::Msg;
use super::{cancelled, Pending, Shared};
use crate::error::{Error, Result};
use crate::generate::{Decoding, FinishReason, TokenEvent};
use crate::llm::Model;
use crate::model::{KvCache, SeqInput, Workspace};

/// Start the scheduler thread.
pub(super) fn spawn(model: Arc<Model>, shared: Arc<Shared>) -> Result<()> {
    std::thread::Builder::new()
        .name("finllm-engine".into())
        .spawn(move || {
            let mut stopper = Stopper { shared: &shared };
            run(&model, &shared);
            stopper.stop();
        })
        .map(drop)
        .map_err(|e| Error::Engine {
            reason: format!("cannot start the scheduler thread: {e}"),
        })
}

/// Closes the queue when the scheduler ends, however it ends, failing what still waits: no
/// request is left without an answer.
struct Stopper<'a> {
    shared: &'a Shared,
}

impl Stopper<'_> {
    fn stop(&mut self) {
        let waiting: Vec<Pending> = {
            let mut state = self.shared.lock();
            state.open = false;
            state.waiting_tokens = 0;
            state.waiting.drain(..).collect()
        };
        self.shared.room.notify_all();
        for p in waiting {
            self.shared.metrics.ended(Outcome::Failed, 0, None);
            let _ = p.tx.send(Msg::Failed(Error::Engine {
                reason: "the engine's scheduler stopped".into(),
            }));
        }
    }
}

impl Drop for Stopper<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A request in the running batch.
struct Running<'m> {
    decoding: Decoding<'m>,
    cache: KvCache,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// The token to run next once the prompt is in (the last sampled one).
    next: Option<u32>,
    /// While `cache` is a new shared prefix being prefilled: its length. At that position it
    /// becomes a prefix-cache entry and the request continues in a cache of its own after it.
    building: Option<usize>,
    /// KV positions this request holds against the budget (a shared prefix it reads is
    /// counted by the prefix cache instead).
    reserve: usize,
    submitted: Instant,
    first_token: Option<Instant>,
    deadline: Option<Instant>,
    cancel: Arc<std::sync::atomic::AtomicBool>,
    tx: std::sync::mpsc::Sender<Msg>,
}

impl Running<'_> {
    fn prompt_len(&self) -> usize {
        self.decoding.prompt_ids().len()
    }
}

/// What one step asks of one running request.
#[derive(Clone, Copy)]
enum Work {
    Decode,
    /// The prompt tokens after those already cached, up to `to`.
    Prefill {
        to: usize,
    },
}

/// The KV memory the scheduler holds across steps.
struct Batch {
    /// Positions reserved by running requests.
    kv_reserved: usize,
    /// Shared prefixes, holding positions of their own.
    prefixes: PrefixStore,
    /// The last step held the decoding requests back for short prompts.
    decode_held: bool,
}

impl Batch {
    fn gauges(&self, running: usize) -> Gauges {
        Gauges {
            running,
            kv_reserved: self.kv_reserved + self.prefixes.tokens(),
            prefix_cached: self.prefixes.tokens(),
        }
    }

    /// Whether a request needing `need` positions fits, evicting shared prefixes nobody reads
    /// if that makes the room.
    fn make_room(&mut self, need: usize, budget: usize) -> bool {
        if self.kv_reserved + need > budget {
            return false;
        }
        while self.kv_reserved + self.prefixes.tokens() + need > budget {
            if !self.prefixes.evict_one() {
                return false;
            }
        }
        true
    }

    /// A request leaves the batch: its positions go back to the budget.
    fn release(&mut self, r: &Running<'_>) {
        self.kv_reserved -= r.reserve;
        if let Some(n) = r.building {
            self.prefixes.abandon(&r.decoding.prompt_ids()[..n]);
        }
    }
}

fn run(model: &Model, shared: &Shared) {
    let mut running: Vec<Running<'_>> = Vec::new();
    let min_prefix = if model.transformer().shares_prefixes() {
        shared.config.prefix_min_tokens
    } else {
        0
    };
    let mut batch = Batch {
        kv_reserved: 0,
        prefixes: PrefixStore::new(min_prefix, shared.config.prefix_max_entries),
        decode_held: false,
    };
    // The forward pass's buffers, kept from step to step.
    let mut workspace = Workspace::default();
    loop {
        // Admit, or sleep until there is something to do.
        {
            let mut state = shared.lock();
            loop {
                expire_waiting(shared, &mut state);
                let mut admitted = false;
                while running.len() < shared.config.max_running {
                    let Some(front) = state.waiting.front() else { break };
                    let plan = batch.prefixes.plan(&front.ids);
                    let need = match &plan {
                        Plan::Hit(prefix) => front.reserve() - prefix.len(),
                        Plan::Alone | Plan::Build(_) => front.reserve(),
                    };
                    if !batch.make_room(need, shared.kv_tokens) {
                        break;
                    }
                    let p = state.waiting.pop_front().expect("checked above");
                    state.waiting_tokens -= p.ids.len();
                    admitted = true;
                    batch.prefixes.admitted(&p.ids, &plan);
                    let building = match plan {
                        Plan::Build(n) => Some(p.ids[..n].to_vec()),
                        _ => None,
                    };
                    match start(model, shared, p, plan) {
                        Some(r) => {
                            shared.metrics.admitted(r.submitted.elapsed(), r.prefilled);
                            batch.kv_reserved += r.reserve;
                            running.push(r);
                        }
                        None => {
                            if let Some(ids) = building {
                                batch.prefixes.abandon(&ids);
                            }
                        }
                    }
                }
                if admitted {
                    shared.room.notify_all();
                }
                if !running.is_empty() {
                    break;
                }
                if state.closing && state.waiting.is_empty() {
                    return;
                }
                shared.metrics.gauges(batch.gauges(0));
                state = shared.work.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        }
        retire_stopped(shared, &mut running, &mut batch);
        // What was freed shows before the next step runs.
        shared.metrics.gauges(batch.gauges(running.len()));
        if running.is_empty() {
            continue;
        }
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            step(model, shared, &mut running, &mut batch, &mut workspace)
        }));
        let (generated, size) = match outcome {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                fail_all(
                    shared,
                    &mut running,
                    &mut batch,
                    &format!("a batched forward pass failed: {e}"),
                );
                (0, 0)
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                fail_all(
                    shared,
                    &mut running,
                    &mut batch,
                    &format!("internal error in a step: {what}"),
                );
                (0, 0)
            }
        };
        shared
            .metrics
            .step(size, generated, started.elapsed(), batch.decode_held && size > 0);
        shared.metrics.gauges(batch.gauges(running.len()));
    }
}

/// Set up a waiting request to run as `plan` says; one that cannot (its checks at submit make
/// that unlikely) gets its error here.
fn start<'m>(model: &'m Model, shared: &Shared, p: Pending, plan: Plan) -> Option<Running<'m>> {
    let transformer = model.transformer();
    let reserve = p.reserve();
    let started = match plan {
        Plan::Alone => Ok((transformer.new_cache_for(reserve), 0, None, reserve)),
        Plan::Build(n) => Ok((transformer.new_cache_for(n), 0, Some(n), reserve)),
        Plan::Hit(prefix) => {
            let n = prefix.len();
            transformer
                .cache_after_prefix(prefix, reserve - n)
                .map(|cache| (cache, n, None, reserve - n))
        }
    }
    .and_then(|cache| {
        let context = model.config().context_length;
        Decoding::new(model.tokenizer(), p.ids, p.params, context).map(|d| (d, cache))
    });
    match started {
        Ok((decoding, (cache, prefilled, building, reserve))) => Some(Running {
            decoding,
            cache,
            prefilled,
            next: None,
            building,
            reserve,
            submitted: p.submitted,
            first_token: None,
            deadline: p.deadline,
            cancel: p.cancel,
            tx: p.tx,
        }),
        Err(e) => {
            shared.metrics.ended(Outcome::Failed, 0, None);
            let _ = p.tx.send(Msg::Failed(e));
            None
        }
    }
}

/// Answer waiting requests that were cancelled or whose deadline passed.
fn expire_waiting(shared: &Shared, state: &mut super::QueueState) {
    let now = Instant::now();
    let mut i = 0;
    let mut removed = false;
    while i < state.waiting.len() {
        let p = &state.waiting[i];
        let expired = p.deadline.is_some_and(|d| now >= d);
        if !(expired || cancelled(&p.cancel)) {
            i += 1;
            continue;
        }
        let p = state.waiting.remove(i).expect("index in range");
        state.waiting_tokens -= p.ids.len();
        removed = true;
        if !cancelled(&p.cancel) {
            shared.metrics.ended(Outcome::Failed, 0, None);
            let _ = p.tx.send(Msg::Failed(Error::DeadlineExceeded { generated: 0 }));
        } else {
            let g = crate::generate::Generation {
                prompt_ids: p.ids,
                ids: Vec::new(),
                text: String::new(),
                steps: Vec::new(),
                finish: FinishReason::Cancelled,
                timings: Default::default(),
            };
            shared.metrics.ended(Outcome::Cancelled, 0, None);
            let _ = p.tx.send(Msg::Done(Box::new(g)));
        }
    }
    if removed {
        shared.room.notify_all();
    }
}

/// End running requests that were cancelled or ran past their deadline, freeing their caches.
fn retire_stopped(shared: &Shared, running: &mut Vec<Running<'_>>, batch: &mut Batch) {
    let now = Instant::now();
    let mut gone = Vec::new();
    let mut i = 0;
    while i < running.len() {
        let r = &running[i];
        let expired = r.deadline.is_some_and(|d| now >= d);
        if !(expired || cancelled(&r.cancel)) {
            i += 1;
            continue;
        }
        let mut r = running.remove(i);
        // A cancelled request is cancelled, even if its deadline has passed too.
        let end = if !cancelled(&r.cancel) {
            let generated = r.decoding.generated_ids().len();
            End::Failed(Error::DeadlineExceeded { generated })
        } else {
            r.decoding.end(FinishReason::Cancelled);
            End::Done(Outcome::Cancelled)
        };
        gone.push((r, end));
    }
    retire(shared, batch, running.len(), gone);
}

/// `r` has prefilled the shared prefix it was building: hand the cache to the prefix store and
/// continue in a cache of its own that reads it.
fn share_prefix(model: &Model, batch: &mut Batch, r: &mut Running<'_>) -> Result<()> {
    let n = r.building.take().expect("the request was building a prefix");
    let built = std::mem::replace(&mut r.cache, model.transformer().new_cache_for(0));
    // The prefix's positions now belong to the store (or ours is dropped for the identical
    // entry it already had).
    let (prefix, _) = batch.prefixes.insert(&r.decoding.prompt_ids()[..n], built);
    batch.kv_reserved -= n;
    r.reserve -= n;
    r.cache = model.transformer().cache_after_prefix(prefix, r.reserve)?;
    Ok(())
}

/// How a request left the batch.
enum End {
    /// Its generation is sent.
    Done(Outcome),
    Failed(Error),
}

/// Requests that left the batch: their positions go back to the budget and the gauges show it,
/// their caches are freed, and only then is each end sent, so that a caller who has seen its
/// request end finds the memory back (in [`Engine::metrics`](super::Engine::metrics) too).
/// `running` is how many requests stay.
fn retire(shared: &Shared, batch: &mut Batch, running: usize, gone: Vec<(Running<'_>, End)>) {
    if gone.is_empty() {
        return;
    }
    for (r, _) in &gone {
        batch.release(r);
    }
    // The caches go first: a shared prefix one of them read may now be idle, and past the
    // bound on entries (an entry made while every other was read could not evict one then).
    let gone: Vec<_> = gone
        .into_iter()
        .map(|(r, end)| {
            let Running {
                decoding,
                cache,
                tx,
                first_token,
                ..
            } = r;
            drop(cache);
            (decoding, tx, first_token, end)
        })
        .collect();
    batch.prefixes.trim();
    shared.metrics.gauges(batch.gauges(running));
    for (decoding, tx, first_token, end) in gone {
        match end {
            End::Done(outcome) => {
                let decode = first_token.map(|t| t.elapsed());
                let g = decoding.into_generation();
                shared.metrics.ended(outcome, g.ids.len(), decode);
                let _ = tx.send(Msg::Done(Box::new(g)));
            }
            End::Failed(e) => {
                shared
                    .metrics
                    .ended(Outcome::Failed, decoding.generated_ids().len(), None);
                let _ = tx.send(Msg::Failed(e));
            }
        }
    }
}

fn fail_all(shared: &Shared, running: &mut Vec<Running<'_>>, batch: &mut Batch, reason: &str) {
    let gone = running
        .drain(..)
        .map(|r| {
            let e = Error::Engine {
                reason: reason.to_string(),
            };
            (r, End::Failed(e))
        })
        .collect();
    retire(shared, batch, 0, gone);
}

/// Sample the next token of each `(index, state, logits)` request: the requests are
/// independent (each its own sampler, history and text), so with several they run on the pool's
/// threads (everything after the forward pass of an 8-stream step, SmolLM2's 49,152-token
/// vocabulary: 0.23 ms on one thread, 0.15-0.19 ms with the sampling on two). Returns the results
/// in the order given.
fn sample_all(model: &Model, sampling: Vec<(usize, &mut Decoding<'_>, &[f32])>) -> Vec<(usize, Result<TokenEvent>)> {
    if sampling.len() < 2 {
        return sampling
            .into_iter()
            .map(|(i, decoding, row)| (i, decoding.step(row)))
            .collect();
    }
    model.run(|| {
        sampling
            .into_par_iter()
            .map(|(i, decoding, row)| (i, decoding.step(row)))
            .collect()
    })
}

/// One forward step over the running batch: every decoding request's next token, then prompt
/// chunks in admission order while the step's token budget lasts. Returns the tokens generated
/// and the requests that ran.
fn step(
    model: &Model,
    shared: &Shared,
    running: &mut Vec<Running<'_>>,
    batch: &mut Batch,
    ws: &mut Workspace,
) -> Result<(usize, usize)> {
    let mut budget = shared.config.step_tokens;
    let mut work: Vec<Option<Work>> = vec![None; running.len()];
    let pending: usize = running
        .iter()
        .filter(|r| r.next.is_none())
        .map(|r| r.building.unwrap_or(r.prompt_len()) - r.prefilled)
        .sum();
    // Short prompts first, on their own (EngineConfig::short_prompt_tokens).
    let decoders = running.iter().any(|r| r.next.is_some());
    let alone = decoders && pending > 0 && pending <= shared.config.short_prompt_tokens && !batch.decode_held;
    batch.decode_held = alone;
    for (w, r) in work.iter_mut().zip(running.iter()) {
        if r.next.is_some() && !alone {
            *w = Some(Work::Decode);
            budget -= 1;
        }
    }
    for (w, r) in work.iter_mut().zip(running.iter()) {
        if budget == 0 {
            break;
        }
        if r.next.is_none() {
            // A prefix being built ends its own chunk: the rest goes into another cache.
            let to = r.building.unwrap_or(r.prompt_len()).min(r.prefilled + budget);
            budget -= to - r.prefilled;
            *w = Some(Work::Prefill { to });
        }
    }
    let logits = {
        let mut inputs: Vec<SeqInput<'_>> = Vec::with_capacity(running.len());
        for (w, r) in work.iter().zip(running.iter_mut()) {
            let Running {
                decoding,
                cache,
                prefilled,
                next,
                ..
            } = r;
            let tokens = match w {
                Some(Work::Decode) => std::slice::from_ref(next.as_ref().expect("decoding requests have a token")),
                Some(Work::Prefill { to }) => &decoding.prompt_ids()[*prefilled..*to],
                None => continue,
            };
            inputs.push(SeqInput { tokens, cache });
        }
        let transformer = model.transformer();
        model.run(|| transformer.forward_last_logits_in(&mut inputs, ws))?
    };
    let ran = work.iter().flatten().count();
    let mut logits = logits.chunks_exact(model.transformer().config().vocab_size);
    let mut ended: Vec<(usize, Option<Error>)> = Vec::new();
    // The requests that sample a token this step, with their logits: found in order (a prefill
    // that ends a shared prefix stores it here), sampled together, then handled in order.
    let mut sampling: Vec<(usize, &mut Decoding<'_>, &[f32])> = Vec::new();
    for (i, (w, r)) in work.iter().zip(running.iter_mut()).enumerate() {
        let Some(w) = w else { continue };
        let row = logits.next().expect("one logits row per input");
        if let Work::Prefill { to } = *w {
            r.prefilled = to;
            if r.building == Some(to) {
                if let Err(e) = share_prefix(model, batch, r) {
                    ended.push((i, Some(e)));
                    continue;
                }
            }
            if to < r.prompt_len() {
                continue;
            }
            r.decoding.prefilled();
        }
        if r.decoding.finished().is_some() {
            // Nothing to generate (max_tokens 0): the prompt is read, the request is done.
            ended.push((i, None));
            continue;
        }
        sampling.push((i, &mut r.decoding, row));
    }
    let sampled = sample_all(model, sampling);
    let mut generated = 0;
    for (i, result) in sampled {
        let r = &mut running[i];
        match result {
            Ok(event) => {
                generated += 1;
                if r.first_token.is_none() {
                    r.first_token = Some(Instant::now());
                    shared.metrics.first_token(r.submitted.elapsed());
                }
                let done = event.finish.is_some();
                r.next = (!done).then_some(event.id);
                let delivered = super::send(&r.tx, event);
                if done || !delivered {
                    ended.push((i, None));
                }
            }
            Err(e) => ended.push((i, Some(e))),
        }
    }
    // In index order, as the removal below expects.
    ended.sort_by_key(|(i, _)| *i);
    // Remove from the back so the indices stay valid; the rest keep their admission order.
    let mut gone = Vec::with_capacity(ended.len());
    for (i, error) in ended.into_iter().rev() {
        let mut r = running.remove(i);
        let end = match error {
            Some(e) => End::Failed(e),
            None if r.decoding.finished().is_some() => End::Done(Outcome::Completed),
            None => {
                // The stream was dropped: nobody reads the rest.
                r.decoding.end(FinishReason::Cancelled);
                End::Done(Outcome::Cancelled)
            }
        };
        gone.push((r, end));
    }
    retire(shared, batch, running.len(), gone);
    Ok((generated, ran))
}
