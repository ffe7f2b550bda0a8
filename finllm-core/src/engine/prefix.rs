//! The shared-prefix cache: prompt beginnings that several requests have in common (a system
//! prompt, a retrieval preamble), prefilled once and read by every request that starts with them.
//!
//! Entries are found automatically. When a request's prompt shares at least
//! [`EngineConfig::prefix_min_tokens`](super::EngineConfig::prefix_min_tokens) leading tokens
//! with a recently admitted prompt, that request prefills the common part into a cache of its
//! own, freezes it as an entry and carries on after it; later requests that start with the
//! entry's tokens skip those positions and read the entry's keys and values where they lie (an
//! `Arc`, never copied). The common length is rounded down to [`BLOCK`] tokens so that prompts
//! differing only in their last words agree on one entry.
//!
//! Memory: an entry's positions count against the engine's KV budget once, however many requests
//! read it; entries nobody reads are evicted least recently used first when a request needs the
//! room, or when there are more than
//! [`EngineConfig::prefix_max_entries`](super::EngineConfig::prefix_max_entries).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::model::KvCache;

/// Entry lengths are multiples of this many tokens.
pub(super) const BLOCK: usize = 16;
/// Recent prompts compared with each new one.
const HISTORY: usize = 32;
/// Leading tokens of each recent prompt kept for the comparison.
const HISTORY_TOKENS: usize = 4096;

struct Entry {
    ids: Vec<u32>,
    cache: Arc<KvCache>,
    last_used: u64,
}

/// What a new request does about shared prefixes.
pub(super) enum Plan {
    /// Prefill the whole prompt into a cache of its own.
    Alone,
    /// Start after this entry.
    Hit(Arc<KvCache>),
    /// Prefill the first `n` tokens into a new entry, then the rest after it.
    Build(usize),
}

pub(super) struct PrefixStore {
    entries: Vec<Entry>,
    /// Leading tokens of recently admitted prompts.
    history: VecDeque<Vec<u32>>,
    /// Prefixes being prefilled by running requests, not entries yet.
    building: Vec<Vec<u32>>,
    min_tokens: usize,
    max_entries: usize,
    /// Positions held by entries.
    tokens: usize,
    clock: u64,
}

impl PrefixStore {
    /// A store that shares prefixes of at least `min_tokens` (0: never) and keeps at most
    /// `max_entries` entries nobody reads.
    pub(super) fn new(min_tokens: usize, max_entries: usize) -> Self {
        Self {
            entries: Vec::new(),
            history: VecDeque::new(),
            building: Vec::new(),
            min_tokens,
            max_entries,
            tokens: 0,
            clock: 0,
        }
    }

    fn enabled(&self) -> bool {
        self.min_tokens > 0 && self.max_entries > 0
    }

    /// Positions held by entries.
    pub(super) fn tokens(&self) -> usize {
        self.tokens
    }

    /// How a request with prompt `ids` should start. The prompt's last token is always run (its
    /// logits give the first generated token), so a prefix is shorter than the prompt.
    pub(super) fn plan(&self, ids: &[u32]) -> Plan {
        if !self.enabled() || ids.len() <= 1 {
            return Plan::Alone;
        }
        let usable = &ids[..ids.len() - 1];
        let hit = self
            .entries
            .iter()
            .filter(|e| usable.starts_with(&e.ids))
            .max_by_key(|e| e.ids.len());
        if let Some(e) = hit {
            return Plan::Hit(e.cache.clone());
        }
        let common = self.history.iter().map(|h| common_len(h, usable)).max().unwrap_or(0);
        let n = common / BLOCK * BLOCK;
        if n == 0 || n < self.min_tokens || self.building.iter().any(|b| b[..] == usable[..n]) {
            return Plan::Alone;
        }
        Plan::Build(n)
    }

    /// Note an admitted request's prompt and plan.
    pub(super) fn admitted(&mut self, ids: &[u32], plan: &Plan) {
        if !self.enabled() {
            return;
        }
        self.clock += 1;
        match plan {
            Plan::Hit(cache) => {
                if let Some(e) = self.entries.iter_mut().find(|e| Arc::ptr_eq(&e.cache, cache)) {
                    e.last_used = self.clock;
                }
            }
            Plan::Build(n) => self.building.push(ids[..*n].to_vec()),
            Plan::Alone => {}
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(ids[..ids.len().min(HISTORY_TOKENS)].to_vec());
    }

    /// A running request finished prefilling the prefix `ids` into `cache`: keep it as an entry
    /// and return the entry to read from (an identical one, if some other request made it
    /// first) and whether the store took `cache`, now counting its positions.
    pub(super) fn insert(&mut self, ids: &[u32], cache: KvCache) -> (Arc<KvCache>, bool) {
        self.abandon(ids);
        self.clock += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| e.ids == ids) {
            e.last_used = self.clock;
            return (e.cache.clone(), false);
        }
        let cache = Arc::new(cache);
        self.tokens += ids.len();
        self.entries.push(Entry {
            ids: ids.to_vec(),
            cache: cache.clone(),
            last_used: self.clock,
        });
        self.trim();
        (cache, true)
    }

    /// Evict idle entries, least recently used first, while there are more than the bound.
    pub(super) fn trim(&mut self) {
        while self.entries.len() > self.max_entries && self.evict_one() {}
    }

    /// A request that was building the prefix `ids` ended first.
    pub(super) fn abandon(&mut self, ids: &[u32]) {
        if let Some(i) = self.building.iter().position(|b| b[..] == *ids) {
            self.building.swap_remove(i);
        }
    }

    /// Drop the least recently used entry that no request reads; false if there is none.
    pub(super) fn evict_one(&mut self) -> bool {
        let idle = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| Arc::strong_count(&e.cache) == 1)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(i, _)| i);
        match idle {
            Some(i) => {
                let e = self.entries.swap_remove(i);
                self.tokens -= e.ids.len();
                true
            }
            None => false,
        }
    }
}

fn common_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KvPrecision;

    fn cache() -> KvCache {
        KvCache::new(1, KvPrecision::F16)
    }

    fn prompt(shared: usize, own: u32, len: usize) -> Vec<u32> {
        (0..len as u32)
            .map(|i| if (i as usize) < shared { i } else { 1000 + own * 100 + i })
            .collect()
    }

    #[test]
    fn second_prompt_builds_third_hits_and_idle_entries_are_evicted_lru() {
        let mut store = PrefixStore::new(32, 2);
        let a = prompt(40, 1, 64);
        assert!(matches!(store.plan(&a), Plan::Alone), "nothing to share with yet");
        store.admitted(&a, &Plan::Alone);
        let b = prompt(40, 2, 64);
        let plan = store.plan(&b);
        assert!(matches!(plan, Plan::Build(32)), "40 common tokens round down to 32");
        store.admitted(&b, &plan);
        // While b builds it, a third request does not build the same prefix again.
        let c = prompt(40, 3, 64);
        assert!(matches!(store.plan(&c), Plan::Alone));
        let (entry, new) = store.insert(&b[..32], cache());
        assert!(new);
        assert_eq!(store.tokens(), 32);
        match store.plan(&c) {
            Plan::Hit(e) => assert!(Arc::ptr_eq(&e, &entry)),
            _ => panic!("c starts with the entry"),
        }
        // A prompt equal to the entry has no token left to run after it: no hit.
        assert!(matches!(store.plan(&b[..32]), Plan::Alone));
        // An entry in use is not evicted; once idle it is.
        assert!(!store.evict_one());
        drop(entry);
        assert!(store.evict_one());
        assert_eq!(store.tokens(), 0);
    }

    #[test]
    fn more_entries_than_allowed_evict_the_least_recently_used_idle_one() {
        let mut store = PrefixStore::new(16, 2);
        let prefixes: Vec<Vec<u32>> = (0..3).map(|k| (0..16).map(|i| k * 100 + i).collect()).collect();
        let (first, _) = store.insert(&prefixes[0], cache());
        drop(store.insert(&prefixes[1], cache()));
        // Use the first again, then add a third: the second (idle, least recent) goes.
        store.admitted(&[&prefixes[0][..], &[7]].concat(), &Plan::Hit(first.clone()));
        drop(first);
        drop(store.insert(&prefixes[2], cache()));
        let kept: Vec<u32> = store.entries.iter().map(|e| e.ids[0]).collect();
        assert_eq!(kept.len(), 2);
        assert!(kept.contains(&0) && kept.contains(&200), "{kept:?}");
        assert_eq!(store.tokens(), 32);
    }

    #[test]
    fn entries_made_while_all_were_read_are_trimmed_once_idle() {
        let mut store = PrefixStore::new(16, 2);
        let prefixes: Vec<Vec<u32>> = (0..3).map(|k| (0..16).map(|i| k * 100 + i).collect()).collect();
        // Every entry read when the third arrives: none can go, so three stay.
        let held: Vec<Arc<KvCache>> = prefixes.iter().map(|p| store.insert(p, cache()).0).collect();
        assert_eq!((store.entries.len(), store.tokens()), (3, 48));
        store.trim();
        assert_eq!(store.entries.len(), 3, "entries in use stay");
        // Once their readers end, trimming brings the store back to its bound, the least
        // recently used going first.
        drop(held);
        store.trim();
        let kept: Vec<u32> = store.entries.iter().map(|e| e.ids[0]).collect();
        assert_eq!(kept.len(), 2);
        assert!(kept.contains(&100) && kept.contains(&200), "{kept:?}");
        assert_eq!(store.tokens(), 32);
    }

    #[test]
    fn disabled_store_never_shares() {
        let mut store = PrefixStore::new(0, 8);
        let a = prompt(64, 1, 80);
        store.admitted(&a, &Plan::Alone);
        assert!(matches!(store.plan(&prompt(64, 2, 80)), Plan::Alone));
    }
}
