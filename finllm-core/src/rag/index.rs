//! The embedded vector index: approximate nearest neighbours by cosine similarity through a
//! hierarchical navigable small-world graph (HNSW, Malkov & Yashunin), with exact search beside
//! it as the ground truth and for selective filters.
//!
//! - Vectors are normalised when added, so cosine similarity is a dot product. The graph is
//!   built and walked with 8-bit copies of the vectors (a quarter of the memory traffic, on
//!   VNNI or AVX2 integer dot products); a search then ranks the closest of what it found
//!   again by the f32 vectors, so returned scores are exact cosines.
//! - Every search may carry a filter (a caller's entitlements, metadata conditions): the graph is
//!   walked through every node, but only admitted nodes enter the results, so a query never
//!   returns a vector it may not see and still returns `k` results when `k` admitted ones exist
//!   and the walk reaches them. When comparing the query with every admitted vector costs fewer
//!   distances than the filtered walk ([`VectorIndex::filtered_plan`]), the search is exact over
//!   the admitted ones instead.
//! - Without a filter too, a collection of at most `4m · ef_search` vectors (4,096 by default)
//!   is searched exactly: the walk would cost as much (about `2m · ef_search` distances at
//!   scattered places, against one read in order per vector). Exact plans read the 8-bit
//!   codes of every vector and the f32 vectors of only those the codes' error bounds cannot
//!   rule out, with the same results as comparing every f32 vector.
//! - Deleting marks a vector: it is never returned, and still routes searches until the index
//!   is rebuilt.
//! - Building is deterministic: the same vectors added in the same order give the same graph.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::error::{Error, Result};
use crate::quant::vector::{dot, dot_i8};
use crate::rag::codec::{Reader, Writer};
use crate::util::Rng;

/// Graph settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexConfig {
    /// Neighbours kept per node on the upper layers (twice as many on the bottom one).
    pub m: usize,
    /// Candidates examined while linking a new vector.
    pub ef_construction: usize,
    /// Candidates examined by a search (at least `k`).
    pub ef_search: usize,
    /// Search exactly when a filter admits fewer than this fraction of the vectors.
    pub exact_below: f64,
    /// Seed of the layer draw.
    pub seed: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            ef_search: 64,
            exact_below: 0.02,
            seed: 0x5eed,
        }
    }
}

/// How [`VectorIndex::search`] answers a filtered query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPlan {
    /// Compare the query with every admitted vector.
    Exact,
    /// Walk the graph keeping `ef` candidates (widened for the filter).
    Graph { ef: usize },
}

/// One search result: the vector's key and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub key: u64,
    pub score: f32,
}

/// A distance-ordered node (smaller distance first in a min-heap through `Reverse`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scored {
    dist: f32,
    node: u32,
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.dist.total_cmp(&other.dist).then(self.node.cmp(&other.node))
    }
}

/// A bit per node: the nodes one search has seen, or those a filter admitted.
struct NodeSet(Vec<u64>);

impl NodeSet {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }

    /// `nodes` (each below `n`).
    fn of(nodes: &[u32], n: usize) -> Self {
        let mut set = Self::new(n);
        for &node in nodes {
            set.insert(node);
        }
        set
    }

    /// Mark `node`; whether it was new.
    fn insert(&mut self, node: u32) -> bool {
        let (w, b) = (node as usize / 64, node % 64);
        let new = self.0[w] & (1 << b) == 0;
        self.0[w] |= 1 << b;
        new
    }

    fn has(&self, node: u32) -> bool {
        let (w, b) = (node as usize / 64, node % 64);
        self.0.get(w).is_some_and(|bits| bits & (1 << b) != 0)
    }
}

/// The neighbour lists. The bottom layer, which every node has and every search spends most
/// of its time on, is one flat array of fixed-size slots (a count, then room for `2m`
/// neighbours), so reading a node's list is one load at a computed address rather than two
/// pointer hops (the layout hnswlib uses); the upper layers, which few nodes reach, keep a
/// vector per node and layer.
#[derive(Debug, Clone, PartialEq)]
struct Graph {
    /// Most neighbours on the bottom layer.
    bottom_max: usize,
    /// Node `i`'s slot: `bottom[i * (bottom_max + 1)]` is its count, its neighbours follow.
    bottom: Vec<u32>,
    /// `upper[i][l - 1]`: node `i`'s neighbours on layer `l >= 1`.
    upper: Vec<Vec<Vec<u32>>>,
}

impl Graph {
    fn new(bottom_max: usize) -> Self {
        Self {
            bottom_max,
            bottom: Vec::new(),
            upper: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.upper.len()
    }

    fn reserve(&mut self, nodes: usize) {
        self.bottom.reserve(nodes.saturating_mul(self.bottom_max + 1));
        self.upper.reserve(nodes);
    }

    /// A new node with layers `0..=level` and no neighbours yet.
    fn push_node(&mut self, level: usize) {
        self.bottom.resize(self.bottom.len() + self.bottom_max + 1, 0);
        self.upper.push(vec![Vec::new(); level]);
    }

    /// How many layers `node` is on.
    fn layers(&self, node: u32) -> usize {
        self.upper[node as usize].len() + 1
    }

    fn get(&self, node: u32, layer: usize) -> &[u32] {
        if layer == 0 {
            let at = node as usize * (self.bottom_max + 1);
            let count = self.bottom[at] as usize;
            &self.bottom[at + 1..at + 1 + count]
        } else {
            &self.upper[node as usize][layer - 1]
        }
    }

    /// Replace `node`'s neighbours on `layer` (at most `bottom_max` on the bottom one).
    fn set(&mut self, node: u32, layer: usize, list: &[u32]) {
        if layer == 0 {
            assert!(
                list.len() <= self.bottom_max,
                "{} bottom-layer links, room for {}",
                list.len(),
                self.bottom_max
            );
            let at = node as usize * (self.bottom_max + 1);
            self.bottom[at] = list.len() as u32;
            self.bottom[at + 1..at + 1 + list.len()].copy_from_slice(list);
        } else {
            self.upper[node as usize][layer - 1] = list.to_vec();
        }
    }
}

/// Largest dimension the index takes: 8-bit dot products stay exact in 32 bits far above it.
const MAX_DIM: usize = 1 << 16;

/// One 64-byte line of 8-bit codes (rows start on lines, so a row of 384 codes is 6 lines).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(64))]
struct Line([i8; 64]);

/// The vectors in 8 bits, which the graph is built and walked with: a quarter of the memory
/// traffic of the f32 vectors, and most of a search's time is waiting for vectors scattered
/// over the whole array. Node `i`'s components are rounded to a scale of its own (its largest
/// magnitude maps to 127), so its dot product with another code is `scale_a · scale_b · Σ a·b`
/// to about 1e-3 of the true cosine; searches re-rank what the walk found with the f32
/// vectors. Derived from the f32 vectors, so the index file does not store them.
#[derive(Debug, Clone, PartialEq)]
struct Codes {
    /// Lines per row.
    row_lines: usize,
    dim: usize,
    lines: Vec<Line>,
    scales: Vec<f32>,
    /// `Σ |v_i|` of each node's f32 vector: with the scales, it bounds the estimate's error.
    l1: Vec<f32>,
}

fn l1_norm(v: &[f32]) -> f32 {
    v.iter().map(|x| f64::from(x.abs())).sum::<f64>() as f32
}

/// How far an estimate may be from the f32 dot product it stands for: rounding each component
/// moves it by at most half a step, so `|a·b − s_a s_b Σ ca·cb| ≤ (s_b Σ|a| + s_a Σ|b|) / 2 +
/// dim · s_a s_b / 4`; `SLACK` covers the f32 arithmetic of both sides (each below 1e-5 for
/// unit vectors of up to 65536 dimensions).
fn estimate_bound(dim: usize, scale_a: f32, l1_a: f32, scale_b: f32, l1_b: f32) -> f32 {
    const SLACK: f32 = 1e-4;
    (scale_b * l1_a + scale_a * l1_b) * 0.5 + dim as f32 * scale_a * scale_b * 0.25 + SLACK
}

/// A vector in 8 bits with its scale: the query, or a node's row.
#[derive(Clone, Copy)]
struct Probe<'a> {
    code: &'a [i8],
    scale: f32,
}

impl Codes {
    fn new(dim: usize) -> Self {
        Self {
            row_lines: dim.div_ceil(64),
            dim,
            lines: Vec::new(),
            scales: Vec::new(),
            l1: Vec::new(),
        }
    }

    /// `v` rounded into `out` (the largest magnitude to ±127); the scale that undoes it.
    fn quantize(v: &[f32], out: &mut [i8]) -> f32 {
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        if max == 0.0 {
            out.fill(0);
            return 0.0;
        }
        let s = 127.0 / max;
        for (o, &x) in out.iter_mut().zip(v) {
            *o = (x * s).round() as i8;
        }
        max / 127.0
    }

    fn push(&mut self, v: &[f32]) {
        let at = self.lines.len();
        self.lines.resize(at + self.row_lines, Line([0; 64]));
        let dim = self.dim;
        let scale = Self::quantize(v, &mut self.lines_mut(at)[..dim]);
        self.scales.push(scale);
        self.l1.push(l1_norm(v));
    }

    fn lines_mut(&mut self, at: usize) -> &mut [i8] {
        let rows = &mut self.lines[at..at + self.row_lines];
        // SAFETY: a `Line` is 64 `i8`s with no padding (`repr(C)`, size 64), so the lines are
        // `64 · len` contiguous `i8`s, borrowed mutably as the lines are.
        unsafe { std::slice::from_raw_parts_mut(rows.as_mut_ptr().cast::<i8>(), rows.len() * 64) }
    }

    fn probe(&self, node: u32) -> Probe<'_> {
        let at = node as usize * self.row_lines;
        let rows = &self.lines[at..at + self.row_lines];
        // SAFETY: as in `lines_mut`, shared.
        let code = unsafe { std::slice::from_raw_parts(rows.as_ptr().cast::<i8>(), self.dim) };
        Probe {
            code,
            scale: self.scales[node as usize],
        }
    }

    /// The first line of `node`'s row.
    #[cfg(target_arch = "x86_64")]
    fn line_ptr(&self, node: u32) -> *const Line {
        self.lines[node as usize * self.row_lines..].as_ptr()
    }
}

/// What comparing one vector in an exact plan costs, in walked distances: the scan reads the
/// codes in order, the walk at scattered places (100k × 384, AVX-512: 32 ns against 59 ns).
const SCAN_COST: f64 = 0.5;

/// How many of a walk's closest candidates (by the 8-bit estimate) are ranked again with the
/// f32 vectors for `k` results. The estimate is within about 1e-3 of the cosine, so a true
/// top-`k` vector is rarely ranked more than a few places out by the walk.
fn rerank_depth(k: usize) -> usize {
    (4 * k).max(k + 32)
}

/// Vectors with their keys, an HNSW graph over them, and tombstones.
#[derive(Debug, Clone)]
pub struct VectorIndex {
    dim: usize,
    config: IndexConfig,
    /// Node `i`'s normalised vector: `vectors[i * dim..(i + 1) * dim]`.
    vectors: Vec<f32>,
    /// The same in 8 bits, for building and walking the graph.
    codes: Codes,
    keys: Vec<u64>,
    deleted: Vec<bool>,
    live: usize,
    /// Node `i`'s neighbours on each of its layers `0..=level`.
    graph: Graph,
    entry: Option<u32>,
    rng: Rng,
}

impl VectorIndex {
    /// An empty index of `dim`-dimensional vectors.
    pub fn new(dim: usize, config: IndexConfig) -> Result<Self> {
        if dim == 0 || dim > MAX_DIM {
            return Err(Error::invalid("dim", format!("must be 1 to {MAX_DIM}")));
        }
        if config.m < 2 {
            return Err(Error::invalid("m", "must be at least 2"));
        }
        if config.ef_construction == 0 || config.ef_search == 0 {
            return Err(Error::invalid("ef", "ef_construction and ef_search must be at least 1"));
        }
        Ok(Self {
            dim,
            config,
            vectors: Vec::new(),
            codes: Codes::new(dim),
            keys: Vec::new(),
            deleted: Vec::new(),
            live: 0,
            graph: Graph::new(2 * config.m),
            entry: None,
            rng: Rng::new(config.seed),
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// Vectors that searches may return (added and not deleted).
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Change how many candidates a search examines.
    pub fn set_ef_search(&mut self, ef: usize) {
        self.config.ef_search = ef.max(1);
    }

    /// Every live entry: its key and its normalised vector, in insertion order.
    pub fn entries(&self) -> impl Iterator<Item = (u64, &[f32])> {
        (0..self.keys.len())
            .filter(|&i| !self.deleted[i])
            .map(|i| (self.keys[i], self.vector(i as u32)))
    }

    fn vector(&self, node: u32) -> &[f32] {
        let i = node as usize * self.dim;
        &self.vectors[i..i + self.dim]
    }

    /// Ask the CPU to start loading the first cache line of `node`'s code.
    #[inline]
    fn prefetch(&self, node: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            let line = self.codes.line_ptr(node);
            // SAFETY: a prefetch is a hint that never faults; the address is a code line.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.cast()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = node;
    }

    /// The walk's distance: one minus the cosine estimated from the 8-bit codes.
    #[inline]
    fn dist(&self, p: Probe<'_>, node: u32) -> f32 {
        let n = self.codes.probe(node);
        1.0 - p.scale * n.scale * dot_i8(p.code, n.code) as f32
    }

    /// One minus the cosine, from the f32 vectors.
    fn exact_dist(&self, q: &[f32], node: u32) -> f32 {
        1.0 - dot(q, self.vector(node))
    }

    /// `q` (normalised) in 8 bits, to walk the graph with.
    fn quantized(&self, q: &[f32]) -> (Vec<i8>, f32) {
        let mut code = vec![0i8; self.dim];
        let scale = Codes::quantize(q, &mut code);
        (code, scale)
    }

    /// `v` scaled to unit length; a zero or non-finite vector is refused.
    fn normalised(&self, v: &[f32]) -> Result<Vec<f32>> {
        if v.len() != self.dim {
            return Err(Error::invalid(
                "vector",
                format!("has {} dimensions, the index {}", v.len(), self.dim),
            ));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(Error::invalid("vector", "holds NaN or infinity"));
        }
        let norm = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
        if norm == 0.0 {
            return Err(Error::invalid("vector", "is zero: it has no direction"));
        }
        Ok(v.iter().map(|&x| (f64::from(x) / norm) as f32).collect())
    }

    /// Add `vector` under `key` (keys need not be unique; each addition is its own entry).
    pub fn add(&mut self, key: u64, vector: &[f32]) -> Result<()> {
        let v = self.normalised(vector)?;
        let node = u32::try_from(self.keys.len())
            .ok()
            .filter(|&n| n < u32::MAX)
            .ok_or_else(|| Error::invalid("index", "holds 2^32 - 1 vectors already"))?;
        let level = self.draw_level();
        let capacity = self.vectors.capacity();
        self.vectors.extend_from_slice(&v);
        if self.vectors.capacity() != capacity {
            crate::util::advise_huge_pages(&self.vectors);
        }
        self.codes.push(&v);
        self.keys.push(key);
        self.deleted.push(false);
        self.graph.push_node(level);
        self.live += 1;
        let Some(entry) = self.entry else {
            self.entry = Some(node);
            return Ok(());
        };
        let top = self.graph.layers(entry) - 1;
        let p = self.codes.probe(node);
        // Greedy descent through the layers above the new node's.
        let mut nearest = Scored {
            dist: self.dist(p, entry),
            node: entry,
        };
        for layer in (level + 1..=top).rev() {
            nearest = self.greedy(p, nearest, layer);
        }
        let mut entries = vec![nearest];
        for layer in (0..=level.min(top)).rev() {
            let found = self.search_layer(
                self.codes.probe(node),
                &entries,
                self.config.ef_construction,
                layer,
                None,
            );
            let max = self.max_links(layer);
            let chosen = self.select(&found, self.config.m);
            self.graph
                .set(node, layer, &chosen.iter().map(|s| s.node).collect::<Vec<_>>());
            for s in &chosen {
                self.link(s.node, node, layer, max);
            }
            entries = found;
        }
        if level > top {
            self.entry = Some(node);
        }
        Ok(())
    }

    /// Mark every entry under `key` deleted; how many there were.
    pub fn delete(&mut self, key: u64) -> usize {
        let mut n = 0;
        for (i, k) in self.keys.iter().enumerate() {
            if *k == key && !self.deleted[i] {
                self.deleted[i] = true;
                n += 1;
            }
        }
        self.live -= n;
        n
    }

    fn max_links(&self, layer: usize) -> usize {
        if layer == 0 {
            2 * self.config.m
        } else {
            self.config.m
        }
    }

    fn draw_level(&mut self) -> usize {
        let ml = 1.0 / (self.config.m as f64).ln();
        // A uniform draw in (0, 1]: never 0, so the logarithm is finite.
        let u = ((self.rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-u.ln() * ml) as usize).min(32)
    }

    /// Follow the closest neighbour on `layer` until none is closer.
    fn greedy(&self, q: Probe<'_>, mut best: Scored, layer: usize) -> Scored {
        loop {
            let mut moved = false;
            for &n in self.graph.get(best.node, layer) {
                let d = self.dist(q, n);
                if d < best.dist {
                    best = Scored { dist: d, node: n };
                    moved = true;
                }
            }
            if !moved {
                return best;
            }
        }
    }

    /// The `ef` nodes closest to `q` on `layer` reachable from `entries`, closest first. With
    /// `admit`, every node is walked through but only admitted, undeleted ones are returned.
    fn search_layer(
        &self,
        q: Probe<'_>,
        entries: &[Scored],
        ef: usize,
        layer: usize,
        admit: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<Scored> {
        let mut visited = NodeSet::new(self.keys.len());
        let mut candidates: BinaryHeap<Reverse<Scored>> = BinaryHeap::new();
        let mut results: BinaryHeap<Scored> = BinaryHeap::new();
        let keep = |s: &Scored| admit.is_none_or(|a| a(s.node));
        let mut fresh: Vec<u32> = Vec::with_capacity(self.max_links(layer));
        for &e in entries {
            if visited.insert(e.node) {
                candidates.push(Reverse(e));
                if keep(&e) {
                    results.push(e);
                }
            }
        }
        while results.len() > ef {
            results.pop();
        }
        while let Some(Reverse(c)) = candidates.pop() {
            if results.len() >= ef && results.peek().is_some_and(|w| c.dist > w.dist) {
                break;
            }
            // The neighbours not seen yet; their vectors' first lines start loading at once
            // (the hardware prefetcher follows each sequential read; prefetching more lines
            // stalls on the fill buffers and was no faster).
            fresh.clear();
            for &n in self.graph.get(c.node, layer) {
                if visited.insert(n) {
                    fresh.push(n);
                    self.prefetch(n);
                }
            }
            for &n in &fresh {
                let d = self.dist(q, n);
                let s = Scored { dist: d, node: n };
                if results.len() < ef || results.peek().is_some_and(|w| d < w.dist) {
                    candidates.push(Reverse(s));
                    if keep(&s) {
                        results.push(s);
                        if results.len() > ef {
                            results.pop();
                        }
                    }
                }
            }
        }
        results.into_sorted_vec()
    }

    /// Up to `m` of `found` (closest first) that are not better reached through one another:
    /// a candidate is kept when it is closer to the base than to every node kept so far.
    fn select(&self, found: &[Scored], m: usize) -> Vec<Scored> {
        let mut chosen: Vec<Scored> = Vec::with_capacity(m);
        for &c in found {
            if chosen.len() == m {
                break;
            }
            let v = self.codes.probe(c.node);
            if chosen.iter().all(|s| self.dist(v, s.node) > c.dist) {
                chosen.push(c);
            }
        }
        // Fill up with the closest of the rest, so sparse regions stay connected.
        for &c in found {
            if chosen.len() == m {
                break;
            }
            if !chosen.iter().any(|s| s.node == c.node) {
                chosen.push(c);
            }
        }
        chosen
    }

    /// Add `to` to `from`'s neighbours on `layer`, pruning them back to `max`.
    fn link(&mut self, from: u32, to: u32, layer: usize, max: usize) {
        let mut list = self.graph.get(from, layer).to_vec();
        list.push(to);
        if list.len() <= max {
            self.graph.set(from, layer, &list);
            return;
        }
        let base = self.codes.probe(from);
        let mut scored: Vec<Scored> = list
            .iter()
            .map(|&n| Scored {
                dist: self.dist(base, n),
                node: n,
            })
            .collect();
        scored.sort();
        let kept: Vec<u32> = self.select(&scored, max).iter().map(|s| s.node).collect();
        self.graph.set(from, layer, &kept);
    }

    /// The `k` vectors most similar to `query` that `admit` lets through (all when `None`),
    /// most similar first. Approximate: see [`IndexConfig::ef_search`]. The search is exact
    /// (the same results as [`exact`](Self::exact)) when comparing every admitted vector costs
    /// less than the walk ([`VectorIndex::filtered_plan`]; without a filter: when the
    /// collection holds at most `4m · ef_search` vectors).
    pub fn search(&self, query: &[f32], k: usize, admit: Option<&dyn Fn(u64) -> bool>) -> Result<Vec<Hit>> {
        let q = self.normalised(query)?;
        if k == 0 || self.entry.is_none() {
            return Ok(Vec::new());
        }
        let ef = match admit {
            None => match self.plan_for(self.live, k) {
                // A small collection, or an ef so large that the walk would compute more
                // distances than there are vectors: compare them all.
                SearchPlan::Exact => {
                    let live = (0..self.keys.len() as u32).filter(|&n| !self.deleted[n as usize]);
                    return Ok(self.exact_bounded(&q, k, live));
                }
                SearchPlan::Graph { ef } => ef,
            },
            Some(admit) => {
                // The filter runs once per vector here; either plan reuses its answers (the walk
                // through a bitmap of the admitted nodes).
                let admitted = self.admitted(admit);
                return Ok(match self.plan_for(admitted.len(), k) {
                    SearchPlan::Exact => self.exact_bounded(&q, k, admitted.into_iter()),
                    SearchPlan::Graph { ef } => {
                        let set = NodeSet::of(&admitted, self.keys.len());
                        self.graph_search(&q, k, ef, Some(&set))
                    }
                });
            }
        };
        Ok(self.graph_search(&q, k, ef, None))
    }

    /// How a search for `k` results under `admit` runs. A filtered walk finds about `ef · share`
    /// admitted nodes among the `ef` it keeps, so it keeps `ef / share` candidates (`share`: the
    /// admitted fraction) and computes about that many times the bottom layer's `2m` distances;
    /// exact search computes one per admitted vector, each about half as costly (read in
    /// order). Whichever costs less runs, and exact always below [`IndexConfig::exact_below`]
    /// or when at most `k` vectors are admitted.
    /// (100k vectors, `ef_search` 800, a 10% filter: the walk would compute ~256k distances,
    /// exact search 10k.) Counting the admitted vectors calls `admit` once per vector.
    pub fn filtered_plan(&self, admit: &dyn Fn(u64) -> bool, k: usize) -> SearchPlan {
        self.plan_for(self.admitted(admit).len(), k)
    }

    /// The undeleted nodes `admit` lets through, in order.
    fn admitted(&self, admit: &dyn Fn(u64) -> bool) -> Vec<u32> {
        (0..self.keys.len() as u32)
            .filter(|&n| !self.deleted[n as usize] && admit(self.keys[n as usize]))
            .collect()
    }

    /// [`filtered_plan`](Self::filtered_plan) for `admitted` admitted vectors.
    fn plan_for(&self, admitted: usize, k: usize) -> SearchPlan {
        let share = admitted as f64 / self.live.max(1) as f64;
        if admitted <= k || share < self.config.exact_below {
            return SearchPlan::Exact;
        }
        let ef = self.config.ef_search.max(k);
        let widened = ((ef as f64 / share).ceil() as usize).min(self.keys.len());
        let walk = widened as f64 * self.max_links(0) as f64;
        if (admitted as f64) * SCAN_COST <= walk {
            SearchPlan::Exact
        } else {
            SearchPlan::Graph { ef: widened }
        }
    }

    /// The walk down the layers, then the bottom layer with `ef` candidates; only undeleted
    /// nodes in `admitted` (all when `None`) enter the results.
    fn graph_search(&self, q: &[f32], k: usize, ef: usize, admitted: Option<&NodeSet>) -> Vec<Hit> {
        let Some(entry) = self.entry else {
            return Vec::new();
        };
        let node_ok = |n: u32| !self.deleted[n as usize] && admitted.is_none_or(|s| s.has(n));
        let (code, scale) = self.quantized(q);
        let p = Probe { code: &code, scale };
        let top = self.graph.layers(entry) - 1;
        let mut nearest = Scored {
            dist: self.dist(p, entry),
            node: entry,
        };
        for layer in (1..=top).rev() {
            nearest = self.greedy(p, nearest, layer);
        }
        let found = self.search_layer(p, &[nearest], ef.max(k), 0, Some(&node_ok));
        // The walk ranked by 8-bit estimates; the closest of what it found are ranked again
        // by their f32 vectors, so the results and their scores are exact cosines.
        let mut exact: Vec<Scored> = found
            .iter()
            .take(rerank_depth(k))
            .map(|s| Scored {
                dist: self.exact_dist(q, s.node),
                node: s.node,
            })
            .collect();
        exact.sort();
        exact
            .into_iter()
            .take(k)
            .map(|s| Hit {
                key: self.keys[s.node as usize],
                score: 1.0 - s.dist,
            })
            .collect()
    }

    /// The `k` vectors most similar to `query` that `admit` lets through, by comparing it with
    /// every one: the ground truth for [`search`](Self::search).
    pub fn exact(&self, query: &[f32], k: usize, admit: Option<&dyn Fn(u64) -> bool>) -> Result<Vec<Hit>> {
        let q = self.normalised(query)?;
        Ok(self.exact_normalised(&q, k, admit))
    }

    /// [`exact`](Self::exact)'s results over `nodes` (undeleted), bit for bit, reading the
    /// 8-bit codes of every one and the f32 vectors of only a few: each estimate with its error bound
    /// gives an interval holding the f32 cosine; the `k`-th highest lower end is at most the
    /// `k`-th best cosine, so every vector whose upper end reaches it is compared exactly, and
    /// no vector of the true top `k` (ties included) can be left out.
    fn exact_bounded(&self, q: &[f32], k: usize, nodes: impl Iterator<Item = u32>) -> Vec<Hit> {
        if k == 0 {
            return Vec::new();
        }
        let (code, scale) = self.quantized(q);
        let p = Probe { code: &code, scale };
        let q_l1 = l1_norm(q);
        // (node, upper end) of every admitted vector; the k highest lower ends in a min-heap
        // (`Scored` here holds a lower end, not a distance).
        let mut upper: Vec<(u32, f32)> = Vec::new();
        let mut lowest: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(k + 1);
        for node in nodes {
            let i = node as usize;
            let estimate = 1.0 - self.dist(p, node);
            let bound = estimate_bound(self.dim, scale, q_l1, self.codes.scales[i], self.codes.l1[i]);
            upper.push((node, estimate + bound));
            lowest.push(Reverse(Scored {
                dist: estimate - bound,
                node,
            }));
            if lowest.len() > k {
                lowest.pop();
            }
        }
        // Fewer than k admitted: every one is a candidate.
        let floor = if lowest.len() == k {
            lowest.peek().map_or(f32::NEG_INFINITY, |r| r.0.dist)
        } else {
            f32::NEG_INFINITY
        };
        let mut best: Vec<Scored> = upper
            .into_iter()
            .filter(|&(_, up)| up >= floor)
            .map(|(node, _)| Scored {
                dist: self.exact_dist(q, node),
                node,
            })
            .collect();
        best.sort();
        best.into_iter()
            .take(k)
            .map(|s| Hit {
                key: self.keys[s.node as usize],
                score: 1.0 - s.dist,
            })
            .collect()
    }

    fn exact_normalised(&self, q: &[f32], k: usize, admit: Option<&dyn Fn(u64) -> bool>) -> Vec<Hit> {
        let mut best: BinaryHeap<Scored> = BinaryHeap::new();
        for node in 0..self.keys.len() as u32 {
            let i = node as usize;
            if self.deleted[i] || admit.is_some_and(|a| !a(self.keys[i])) {
                continue;
            }
            let s = Scored {
                dist: self.exact_dist(q, node),
                node,
            };
            if best.len() < k {
                best.push(s);
            } else if best.peek().is_some_and(|w| s < *w) {
                best.pop();
                best.push(s);
            }
        }
        best.into_sorted_vec()
            .into_iter()
            .map(|s| Hit {
                key: self.keys[s.node as usize],
                score: 1.0 - s.dist,
            })
            .collect()
    }
}

impl VectorIndex {
    /// Write the index (settings, vectors, keys, tombstones, graph and the layer draw's state).
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.len(self.dim);
        w.len(self.config.m);
        w.len(self.config.ef_construction);
        w.len(self.config.ef_search);
        w.f64(self.config.exact_below);
        w.u64(self.config.seed);
        for x in self.rng.state() {
            w.u64(x);
        }
        w.len(self.keys.len());
        for (key, deleted) in self.keys.iter().zip(&self.deleted) {
            w.u64(*key);
            w.u8(u8::from(*deleted));
        }
        w.f32s(&self.vectors);
        for node in 0..self.graph.len() as u32 {
            let layers = self.graph.layers(node);
            w.len(layers);
            for layer in 0..layers {
                let list = self.graph.get(node, layer);
                w.len(list.len());
                for &n in list {
                    w.u32(n);
                }
            }
        }
        w.u32(self.entry.unwrap_or(u32::MAX));
    }

    /// Read what [`encode`](Self::encode) wrote, checking the graph as it comes: every
    /// neighbour is a node, no node has more layers or links than the settings allow.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let dim = r.len(1)?;
        let config = IndexConfig {
            m: r.len(1)?,
            ef_construction: r.len(1)?,
            ef_search: r.len(1)?,
            exact_below: r.f64()?,
            seed: r.u64()?,
        };
        let mut index = Self::new(dim, config).map_err(|e| r.error(format!("bad index settings: {e}")))?;
        if !(0.0..=1.0).contains(&config.exact_below) {
            return Err(r.error("bad index settings: exact_below is not a fraction"));
        }
        let state = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
        index.rng = Rng::from_state(state).ok_or_else(|| r.error("bad random state"))?;
        let n = r.len(9)?;
        if n >= u32::MAX as usize {
            return Err(r.error("too many vectors"));
        }
        for _ in 0..n {
            index.keys.push(r.u64()?);
            let deleted = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(r.error("bad tombstone")),
            };
            index.deleted.push(deleted);
        }
        index.live = index.deleted.iter().filter(|d| !**d).count();
        index.vectors = r.f32s()?;
        crate::util::advise_huge_pages(&index.vectors);
        if index.vectors.len() != n * dim {
            return Err(r.error(format!(
                "{} vector values for {n} vectors of {dim}",
                index.vectors.len()
            )));
        }
        index.codes.lines.reserve(n * index.codes.row_lines);
        for v in index.vectors.chunks_exact(dim) {
            let norm: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            if !norm.is_finite() || (norm - 1.0).abs() > 1e-3 {
                return Err(r.error("a stored vector is not of unit length"));
            }
            index.codes.push(v);
        }
        index.graph.reserve(n);
        for node in 0..n as u32 {
            let layers = r.len(8)?;
            if layers == 0 || layers > 33 {
                return Err(r.error(format!("a node with {layers} layers")));
            }
            index.graph.push_node(layers - 1);
            for layer in 0..layers {
                let count = r.len(4)?;
                if count > index.max_links(layer) {
                    return Err(r.error(format!("a node with {count} links on layer {layer}")));
                }
                let mut list = Vec::with_capacity(count);
                for _ in 0..count {
                    let to = r.u32()?;
                    if to as usize >= n {
                        return Err(r.error(format!("a link to node {to} of {n}")));
                    }
                    list.push(to);
                }
                index.graph.set(node, layer, &list);
            }
        }
        let entry = r.u32()?;
        index.entry = match entry {
            u32::MAX if n == 0 => None,
            e if (e as usize) < n => Some(e),
            _ => return Err(r.error("bad entry point")),
        };
        // Every link on a layer must point to a node that has that layer.
        let graph = &index.graph;
        for node in 0..n as u32 {
            for layer in 0..graph.layers(node) {
                if graph.get(node, layer).iter().any(|&to| graph.layers(to) <= layer) {
                    return Err(r.error("a link to a node without that layer"));
                }
            }
        }
        if let Some(e) = index.entry {
            let top = graph.layers(e);
            if (0..n as u32).any(|node| graph.layers(node) > top) {
                return Err(r.error("the entry point is not on the top layer"));
            }
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| (0..dim).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect())
            .collect()
    }

    fn recall(index: &VectorIndex, queries: &[Vec<f32>], k: usize, admit: Option<&dyn Fn(u64) -> bool>) -> f64 {
        let (mut found, mut wanted) = (0, 0);
        for q in queries {
            let truth: Vec<u64> = index.exact(q, k, admit).unwrap().iter().map(|h| h.key).collect();
            let got = index.search(q, k, admit).unwrap();
            assert!(got.len() <= k);
            if let Some(a) = admit {
                assert!(got.iter().all(|h| a(h.key)), "a result the filter refuses");
            }
            found += got.iter().filter(|h| truth.contains(&h.key)).count();
            wanted += truth.len();
        }
        found as f64 / wanted as f64
    }

    #[test]
    fn exact_search_ranks_by_cosine() {
        let mut index = VectorIndex::new(2, IndexConfig::default()).unwrap();
        index.add(1, &[1.0, 0.0]).unwrap();
        index.add(2, &[0.0, 3.0]).unwrap();
        index.add(3, &[1.0, 1.0]).unwrap();
        let hits = index.exact(&[2.0, 0.1], 3, None).unwrap();
        assert_eq!(hits.iter().map(|h| h.key).collect::<Vec<_>>(), [1, 3, 2]);
        let cos = |a: [f32; 2], b: [f32; 2]| (a[0] * b[0] + a[1] * b[1]) / ((a[0].hypot(a[1])) * (b[0].hypot(b[1])));
        assert!((hits[1].score - cos([2.0, 0.1], [1.0, 1.0])).abs() < 1e-6);
        assert_eq!(index.search(&[2.0, 0.1], 3, None).unwrap(), hits);
    }

    #[test]
    fn bad_vectors_are_refused() {
        let mut index = VectorIndex::new(3, IndexConfig::default()).unwrap();
        assert!(index.add(1, &[1.0, 2.0]).is_err());
        assert!(index.add(1, &[0.0; 3]).is_err());
        assert!(index.add(1, &[f32::NAN, 1.0, 1.0]).is_err());
        assert!(index.search(&[1.0, 0.0], 1, None).is_err());
        assert!(index.search(&[1.0, 0.0, 0.0], 5, None).unwrap().is_empty());
        assert!(VectorIndex::new(0, IndexConfig::default()).is_err());
    }

    #[test]
    fn the_graph_finds_almost_every_true_neighbour() {
        let (n, dim) = (3000, 32);
        let vectors = random_vectors(n, dim, 1);
        let mut index = VectorIndex::new(dim, IndexConfig::default()).unwrap();
        for (i, v) in vectors.iter().enumerate() {
            index.add(i as u64, v).unwrap();
        }
        let queries = random_vectors(50, dim, 2);
        let r = recall(&index, &queries, 10, None);
        assert!(r >= 0.95, "recall@10 {r}");
        // A vector in the index is its own nearest neighbour.
        for i in (0..n).step_by(97) {
            assert_eq!(index.search(&vectors[i], 1, None).unwrap()[0].key, i as u64);
        }
    }

    /// The 8-bit estimate is within its error bound of the f32 cosine: with steps `s_a`, `s_b`
    /// and rounding errors of at most half a step, `|Σ a·b − s_a s_b Σ ca·cb| ≤ (s_b Σ|a| +
    /// s_a Σ|b|) / 2 + dim · s_a s_b / 4`, plus f32 rounding.
    #[test]
    fn the_8_bit_estimate_stays_within_its_rounding_bound() {
        for dim in [1, 7, 63, 64, 65, 384, 1000] {
            let vectors = random_vectors(40, dim, dim as u64);
            let mut index = VectorIndex::new(dim, IndexConfig::default()).unwrap();
            for (i, v) in vectors.iter().enumerate() {
                index.add(i as u64, v).unwrap();
            }
            for a in 0..40u32 {
                let (va, pa) = (index.vector(a), index.codes.probe(a));
                for b in 0..40u32 {
                    let (vb, pb) = (index.vector(b), index.codes.probe(b));
                    let exact: f64 = va.iter().zip(vb).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
                    let estimate = 1.0 - f64::from(index.dist(pa, b));
                    let l1 = |v: &[f32]| v.iter().map(|x| f64::from(x.abs())).sum::<f64>();
                    let (sa, sb) = (f64::from(pa.scale), f64::from(pb.scale));
                    let bound = (sb * l1(va) + sa * l1(vb)) / 2.0 + dim as f64 * sa * sb / 4.0 + 1e-5;
                    assert!(
                        (estimate - exact).abs() <= bound,
                        "dim {dim}: {estimate} vs {exact}, bound {bound}"
                    );
                    // The bound the bounded scan uses is at least this one.
                    let used = estimate_bound(
                        dim,
                        pa.scale,
                        index.codes.l1[a as usize],
                        pb.scale,
                        index.codes.l1[b as usize],
                    );
                    assert!(f64::from(used) >= bound, "dim {dim}: {used} < {bound}");
                    // Each row's largest magnitude is exactly ±127.
                    assert_eq!(pa.code.iter().map(|c| c.unsigned_abs()).max(), Some(127));
                }
            }
        }
        assert!(VectorIndex::new(MAX_DIM + 1, IndexConfig::default()).is_err());
        assert!(VectorIndex::new(MAX_DIM, IndexConfig::default()).is_ok());
    }

    /// The bounded scan returns exact search's results bit for bit: on random vectors, on
    /// clusters of near-duplicates (many cosines within the estimate's error of one another),
    /// with exact duplicates (ties), under filters, and for k beyond what the filter admits.
    #[test]
    fn the_bounded_scan_equals_exact_search() {
        let dim = 96;
        let mut vectors = random_vectors(1500, dim, 21);
        let centres = random_vectors(5, dim, 22);
        let mut rng = Rng::new(23);
        for i in 0..500 {
            let c = &centres[i % 5];
            vectors.push(c.iter().map(|&x| x + (rng.next_f64() as f32 - 0.5) * 1e-3).collect());
        }
        for i in 0..50 {
            vectors.push(vectors[i * 7].clone());
        }
        let mut index = VectorIndex::new(dim, IndexConfig::default()).unwrap();
        for (i, v) in vectors.iter().enumerate() {
            index.add(i as u64, v).unwrap();
        }
        index.delete(3);
        let mut queries = random_vectors(15, dim, 24);
        queries.extend(centres.iter().cloned());
        queries.push(vectors[7].clone());
        for q in &queries {
            let q = index.normalised(q).unwrap();
            for modulus in [1u64, 3, 10, 400, 3000] {
                let admit = move |key: u64| key.is_multiple_of(modulus);
                for k in [1, 10, 37] {
                    let want = index.exact_normalised(&q, k, Some(&admit));
                    let got = index.exact_bounded(&q, k, index.admitted(&admit).into_iter());
                    assert_eq!(got, want, "k {k}, 1/{modulus} admitted");
                }
            }
        }
        assert!(index.exact_bounded(&queries[0], 0, 0..10).is_empty());
    }

    /// A collection no bigger than `4m · ef_search` is searched exactly: `search` gives
    /// `exact`'s results bit for bit, deleted vectors included in neither.
    #[test]
    fn small_collections_are_searched_exactly() {
        let (n, dim) = (1500, 40);
        let vectors = random_vectors(n, dim, 31);
        let mut index = VectorIndex::new(dim, IndexConfig::default()).unwrap();
        for (i, v) in vectors.iter().enumerate() {
            index.add(i as u64, v).unwrap();
        }
        index.delete(17);
        for q in random_vectors(30, dim, 32).iter().chain(&vectors[..5]) {
            for k in [1, 10, 50] {
                assert_eq!(index.search(q, k, None).unwrap(), index.exact(q, k, None).unwrap());
            }
        }
    }

    /// The walk ranks by estimates; what a search returns is ranked and scored by the f32
    /// vectors: each score is the exact search's score for that key, bit for bit, in order.
    #[test]
    fn search_scores_are_exact_cosines() {
        let (n, dim) = (2000, 48);
        let vectors = random_vectors(n, dim, 9);
        // ef 16: the walk (16 · 32 distances) is cheaper than comparing all 2000 (at half
        // the cost each).
        let config = IndexConfig {
            ef_search: 16,
            ..IndexConfig::default()
        };
        let mut index = VectorIndex::new(dim, config).unwrap();
        for (i, v) in vectors.iter().enumerate() {
            index.add(i as u64, v).unwrap();
        }
        for q in random_vectors(20, dim, 10) {
            let all: std::collections::HashMap<u64, f32> = index
                .exact(&q, n, None)
                .unwrap()
                .into_iter()
                .map(|h| (h.key, h.score))
                .collect();
            let hits = index.search(&q, 10, None).unwrap();
            assert_eq!(hits.len(), 10);
            for h in &hits {
                assert_eq!(h.score.to_bits(), all[&h.key].to_bits(), "key {}", h.key);
            }
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "not in score order");
        }
    }

    #[test]
    fn filters_hold_inside_the_search_and_still_fill_k() {
        let (n, dim) = (3000, 16);
        let vectors = random_vectors(n, dim, 3);
        let mut index = VectorIndex::new(dim, IndexConfig::default()).unwrap();
        for (i, v) in vectors.iter().enumerate() {
            index.add(i as u64, v).unwrap();
        }
        let queries = random_vectors(30, dim, 4);
        for modulus in [2u64, 10, 100, 1000] {
            let admit = move |key: u64| key.is_multiple_of(modulus);
            let r = recall(&index, &queries, 10, Some(&admit));
            assert!(r >= 0.95, "recall@10 {r} with 1/{modulus} admitted");
            for q in &queries {
                let want = (n as u64).div_ceil(modulus).min(10) as usize;
                assert_eq!(index.search(q, 10, Some(&admit)).unwrap().len(), want);
            }
            // The filtered walk itself, whichever plan `search` chose, with the ef it would use.
            let share = 1.0 / modulus as f64;
            let ef = ((64.0 / share).ceil() as usize).min(n);
            let (mut found, mut wanted) = (0, 0);
            for q in &queries {
                let q = index.normalised(q).unwrap();
                let truth: Vec<u64> = index
                    .exact_normalised(&q, 10, Some(&admit))
                    .iter()
                    .map(|h| h.key)
                    .collect();
                let admitted = index.admitted(&admit);
                let got = index.graph_search(&q, 10, ef, Some(&NodeSet::of(&admitted, index.keys.len())));
                assert!(got.iter().all(|h| admit(h.key)), "a result the filter refuses");
                found += got.iter().filter(|h| truth.contains(&h.key)).count();
                wanted += truth.len();
            }
            let r = found as f64 / wanted as f64;
            assert!(r >= 0.95, "walk recall@10 {r} with 1/{modulus} admitted");
        }
    }

    /// Exact search wherever it computes fewer distances than the widened walk would, the walk
    /// where the filter admits many, exact at any share below `exact_below` or at most k admitted.
    #[test]
    fn the_filtered_plan_picks_the_cheaper_search() {
        let (n, dim) = (6000, 8);
        let vectors = random_vectors(n, dim, 7);
        let mut index = VectorIndex::new(dim, IndexConfig::default()).unwrap();
        for (i, v) in vectors.iter().enumerate() {
            index.add(i as u64, v).unwrap();
        }
        let plan = |modulus: u64, k: usize| index.filtered_plan(&move |key: u64| key.is_multiple_of(modulus), k);
        // Everything admitted: the walk keeps ef_search (64) candidates, ~2048 distances, less
        // than 6000 comparisons at half the cost.
        assert_eq!(plan(1, 10), SearchPlan::Graph { ef: 64 });
        // Half: the walk would keep 128 (~4096 distances) against 3000 exact.
        assert_eq!(plan(2, 10), SearchPlan::Exact);
        assert_eq!(plan(1000, 10), SearchPlan::Exact);
        assert_eq!(index.filtered_plan(&|_| false, 10), SearchPlan::Exact);
        // k above ef: the walk keeps k.
        assert_eq!(plan(1, 80), SearchPlan::Graph { ef: 80 });
        // A smaller ef: a 50% filter walks with it doubled (16 · 32 distances < 3000 / 2).
        let mut narrow = index.clone();
        narrow.set_ef_search(8);
        assert_eq!(
            narrow.filtered_plan(&|key: u64| key.is_multiple_of(2), 5),
            SearchPlan::Graph { ef: 16 }
        );
        assert_eq!(
            narrow.filtered_plan(&|key: u64| key.is_multiple_of(10), 5),
            SearchPlan::Exact
        );
        // Either plan calls the filter once per vector (the walk reads a bitmap of its answers),
        // and the walk's results are what a walk over that bitmap finds: admitted ones only.
        let calls = std::cell::Cell::new(0usize);
        let counting = |key: u64| {
            calls.set(calls.get() + 1);
            key.is_multiple_of(2)
        };
        for q in random_vectors(5, dim, 8) {
            calls.set(0);
            let got = narrow.search(&q, 5, Some(&counting)).unwrap();
            assert_eq!(calls.get(), n, "one call per vector on the graph plan");
            assert_eq!(got.len(), 5);
            assert!(got.iter().all(|h| h.key.is_multiple_of(2)));
            let qn = narrow.normalised(&q).unwrap();
            let set = NodeSet::of(&narrow.admitted(&|key: u64| key.is_multiple_of(2)), narrow.keys.len());
            assert_eq!(got, narrow.graph_search(&qn, 5, 16, Some(&set)));
        }
    }

    #[test]
    fn deleted_vectors_never_come_back() {
        let (n, dim) = (1000, 8);
        let vectors = random_vectors(n, dim, 5);
        let mut index = VectorIndex::new(dim, IndexConfig::default()).unwrap();
        for (i, v) in vectors.iter().enumerate() {
            index.add(i as u64, v).unwrap();
        }
        for key in (0..n as u64).filter(|k| k % 3 == 0) {
            assert_eq!(index.delete(key), 1);
        }
        assert_eq!(index.delete(0), 0);
        assert_eq!(index.len(), n - n.div_ceil(3));
        for (i, v) in vectors.iter().enumerate().step_by(7) {
            let hits = index.search(v, 5, None).unwrap();
            assert!(hits.iter().all(|h| h.key % 3 != 0));
            if i % 3 != 0 {
                assert_eq!(hits[0].key, i as u64);
            }
        }
    }

    #[test]
    fn building_is_deterministic() {
        let vectors = random_vectors(500, 8, 6);
        let build = || {
            let mut index = VectorIndex::new(8, IndexConfig::default()).unwrap();
            for (i, v) in vectors.iter().enumerate() {
                index.add(i as u64, v).unwrap();
            }
            index
        };
        let (a, b) = (build(), build());
        assert_eq!(a.graph, b.graph);
        assert_eq!(a.entry, b.entry);
    }

    #[test]
    fn an_encoded_index_searches_and_grows_like_the_original() {
        let vectors = random_vectors(800, 12, 7);
        let mut index = VectorIndex::new(12, IndexConfig::default()).unwrap();
        for (i, v) in vectors.iter().enumerate().take(600) {
            index.add(i as u64, v).unwrap();
        }
        index.delete(5);
        let mut w = Writer::default();
        index.encode(&mut w);
        let mut r = Reader::new(&w.buf, std::path::Path::new("mem"));
        let mut back = VectorIndex::decode(&mut r).unwrap();
        r.finish().unwrap();
        assert_eq!(back.graph, index.graph);
        assert_eq!(back.len(), index.len());
        for (i, v) in vectors.iter().enumerate().skip(600) {
            index.add(i as u64, v).unwrap();
            back.add(i as u64, v).unwrap();
        }
        assert_eq!(back.graph, index.graph, "the layer draw continues where it stopped");
        for q in random_vectors(20, 12, 8) {
            assert_eq!(back.search(&q, 10, None).unwrap(), index.search(&q, 10, None).unwrap());
        }
        // Every truncation is an error, never a panic.
        for cut in (0..w.buf.len()).step_by(97) {
            let mut r = Reader::new(&w.buf[..cut], std::path::Path::new("mem"));
            assert!(
                VectorIndex::decode(&mut r).and_then(|_| r.finish()).is_err(),
                "cut at {cut}"
            );
        }
    }
}
