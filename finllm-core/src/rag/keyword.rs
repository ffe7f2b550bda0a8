//! The keyword index: BM25 (Robertson–Spärck Jones, `k1` 1.2, `b` 0.75) over the same chunks as
//! the vector index. Tickers, figures and names matter in finance, so terms keep numbers whole
//! (`14.2`, `1250` for "1,250") and mixed tokens (`cet1`, `q3`); Chinese runs are segmented into
//! words by jieba (search mode, so both 人民银行 and 银行 match); English words lose a plural
//! `s` and common stop words.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::rag::chunk::is_cjk;

const K1: f32 = 1.2;
const B: f32 = 0.75;

const STOP_EN: &[&str] = &[
    "a", "s", "t", "an", "and", "are", "as", "at", "be", "been", "but", "by", "did", "do", "does", "for", "from",
    "had", "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "of", "on", "or", "our", "so", "than",
    "that", "the", "their", "them", "then", "there", "these", "they", "this", "those", "to", "was", "we", "were",
    "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your",
];
const STOP_ZH: &[&str] = &[
    "的", "了", "和", "是", "在", "与", "及", "或", "为", "对", "其", "将", "等", "由", "于", "以", "把", "被", "之",
    "而", "中", "上", "下", "也", "都", "就", "并", "从", "到", "向", "这", "那", "个", "有", "吗", "呢", "什么",
    "多少", "哪些", "如何", "是否", "公司", "年",
];

fn jieba() -> &'static jieba_rs::Jieba {
    static JIEBA: OnceLock<jieba_rs::Jieba> = OnceLock::new();
    JIEBA.get_or_init(jieba_rs::Jieba::new)
}

/// The terms BM25 sees in `text`, in order (repeats kept).
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if is_han(c) {
            let start = i;
            while i < chars.len() && is_han(chars[i]) {
                i += 1;
            }
            let run: String = chars[start..i].iter().collect();
            for token in jieba().cut_for_search(&run, true) {
                let w = token.word;
                if !STOP_ZH.contains(&w) && w.chars().any(is_han) {
                    out.push(w.to_string());
                }
            }
        } else if c.is_alphanumeric() {
            let start = i;
            let mut word = String::new();
            while i < chars.len() {
                let d = chars[i];
                if d.is_alphanumeric() && !is_han(d) {
                    word.extend(d.to_lowercase());
                    i += 1;
                } else if matches!(d, '.' | ',')
                    && i > start
                    && chars[i - 1].is_ascii_digit()
                    && chars.get(i + 1).is_some_and(char::is_ascii_digit)
                {
                    // 14.2 stays one term; 1,250 becomes 1250.
                    if d == '.' {
                        word.push('.');
                    }
                    i += 1;
                } else {
                    break;
                }
            }
            if let Some(w) = normalise_word(word) {
                out.push(w);
            }
        } else {
            i += 1;
        }
    }
    out
}

fn is_han(c: char) -> bool {
    is_cjk(c) && c.is_alphanumeric()
}

fn normalise_word(word: String) -> Option<String> {
    if STOP_EN.contains(&word.as_str()) {
        return None;
    }
    if word.chars().all(|c| c.is_ascii_lowercase()) && word.len() > 3 {
        if let Some(stem) = word.strip_suffix("ies") {
            return Some(format!("{stem}y"));
        }
        if word.ends_with('s') && !word.ends_with("ss") && !word.ends_with("us") && !word.ends_with("is") {
            return Some(word[..word.len() - 1].to_string());
        }
    }
    Some(word)
}

/// BM25 over documents numbered by the caller (slots), with removal.
#[derive(Debug, Clone, Default)]
pub struct Bm25 {
    term_ids: HashMap<String, u32>,
    /// Per term: (slot, term frequency), slots ascending.
    postings: Vec<Vec<(u32, u32)>>,
    /// Per slot: its length in terms and its distinct term ids (empty when absent).
    docs: Vec<Option<(u32, Vec<u32>)>>,
    live: usize,
    total_len: u64,
}

impl Bm25 {
    pub fn new() -> Self {
        Self::default()
    }

    /// Documents indexed.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Index `text` under `slot` (replacing what was there).
    pub fn add(&mut self, slot: u32, text: &str) {
        self.add_terms(slot, &terms(text));
    }

    /// Index already extracted terms under `slot`.
    pub fn add_terms(&mut self, slot: u32, terms: &[String]) {
        self.remove(slot);
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for t in terms {
            let next = self.term_ids.len() as u32;
            let id = *self.term_ids.entry(t.clone()).or_insert(next);
            if id as usize == self.postings.len() {
                self.postings.push(Vec::new());
            }
            *counts.entry(id).or_default() += 1;
        }
        let mut ids: Vec<u32> = counts.keys().copied().collect();
        ids.sort_unstable();
        for &id in &ids {
            let list = &mut self.postings[id as usize];
            let at = list.partition_point(|&(s, _)| s < slot);
            list.insert(at, (slot, counts[&id]));
        }
        if self.docs.len() <= slot as usize {
            self.docs.resize(slot as usize + 1, None);
        }
        self.docs[slot as usize] = Some((terms.len() as u32, ids));
        self.live += 1;
        self.total_len += terms.len() as u64;
    }

    /// Forget `slot`; whether it was indexed.
    pub fn remove(&mut self, slot: u32) -> bool {
        let Some(Some((len, ids))) = self.docs.get_mut(slot as usize).map(Option::take) else {
            return false;
        };
        for id in ids {
            let list = &mut self.postings[id as usize];
            if let Ok(at) = list.binary_search_by_key(&slot, |&(s, _)| s) {
                list.remove(at);
            }
        }
        self.live -= 1;
        self.total_len -= u64::from(len);
        true
    }

    /// The `k` best-scoring slots for `query` that `admit` lets through, best first (ties by
    /// slot). Slots without any query term are never returned.
    pub fn search(&self, query: &str, k: usize, admit: Option<&dyn Fn(u32) -> bool>) -> Vec<(u32, f32)> {
        if self.live == 0 || k == 0 {
            return Vec::new();
        }
        let mut query_terms = terms(query);
        query_terms.sort();
        query_terms.dedup();
        let n = self.live as f32;
        let avg = self.total_len as f32 / n;
        let mut scores: HashMap<u32, f32> = HashMap::new();
        for t in &query_terms {
            let Some(&id) = self.term_ids.get(t) else { continue };
            let list = &self.postings[id as usize];
            if list.is_empty() {
                continue;
            }
            let df = list.len() as f32;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for &(slot, tf) in list {
                if admit.is_some_and(|a| !a(slot)) {
                    continue;
                }
                let len = self.docs[slot as usize].as_ref().map_or(0, |d| d.0) as f32;
                let tf = tf as f32;
                *scores.entry(slot).or_default() += idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / avg));
            }
        }
        let mut ranked: Vec<(u32, f32)> = scores.into_iter().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(k);
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_keep_figures_tickers_and_chinese_words() {
        assert_eq!(
            terms("ACMB's CET1 ratio rose to 14.2% on revenues of $1,250.5m (Q3)."),
            ["acmb", "cet1", "ratio", "rose", "14.2", "revenue", "1250.5m", "q3"]
        );
        let zh = terms("中国人民银行宣布下调存款准备金率");
        assert!(
            zh.contains(&"中国人民银行".to_string()) && zh.contains(&"银行".to_string()),
            "{zh:?}"
        );
        assert!(zh.contains(&"准备金".to_string()), "{zh:?}");
        assert!(terms("的 了 the of").is_empty());
    }

    /// BM25 by its formula, in f64, over plain term lists: the oracle for the index.
    fn bm25_oracle(docs: &[Vec<String>], query: &[String]) -> Vec<f64> {
        let n = docs.len() as f64;
        let avg = docs.iter().map(|d| d.len() as f64).sum::<f64>() / n;
        docs.iter()
            .map(|d| {
                let mut q: Vec<&String> = query.iter().collect();
                q.sort();
                q.dedup();
                q.iter()
                    .map(|t| {
                        let df = docs.iter().filter(|d| d.contains(t)).count() as f64;
                        let tf = d.iter().filter(|w| w == t).count() as f64;
                        if tf == 0.0 {
                            return 0.0;
                        }
                        let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
                        idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * d.len() as f64 / avg))
                    })
                    .sum()
            })
            .collect()
    }

    #[test]
    fn scores_match_the_formula_and_survive_removal() {
        let mut rng = crate::util::Rng::new(9);
        let vocab = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"];
        let docs: Vec<Vec<String>> = (0..60)
            .map(|_| {
                (0..1 + rng.next_u64() % 12)
                    .map(|_| vocab[(rng.next_u64() % 8) as usize].to_string())
                    .collect()
            })
            .collect();
        let mut index = Bm25::new();
        for (i, d) in docs.iter().enumerate() {
            index.add_terms(i as u32, d);
        }
        // Remove every third and put it back under a new slot: the statistics must not drift.
        for i in (0..60).step_by(3) {
            assert!(index.remove(i as u32));
        }
        assert!(!index.remove(0));
        let mut slots: Vec<usize> = (0..60).filter(|i| i % 3 != 0).collect();
        for i in (0..60).step_by(3) {
            index.add_terms(100 + i as u32, &docs[i]);
            slots.push(i);
        }
        let slot_of = |doc: usize| {
            if doc.is_multiple_of(3) {
                100 + doc as u32
            } else {
                doc as u32
            }
        };
        for query in [
            vec!["alpha"],
            vec!["beta", "theta", "beta"],
            vec!["zeta", "eta", "nothing"],
        ] {
            let q: Vec<String> = query.iter().map(|s| s.to_string()).collect();
            let want = bm25_oracle(&docs, &q);
            let got = index.search(&q.join(" "), 100, None);
            for &(slot, score) in &got {
                let doc = slots.iter().copied().find(|&d| slot_of(d) == slot).unwrap();
                assert!(
                    (f64::from(score) - want[doc]).abs() < 1e-4,
                    "doc {doc}: {score} vs {}",
                    want[doc]
                );
            }
            assert_eq!(got.len(), want.iter().filter(|&&s| s > 0.0).count());
            assert!(got.windows(2).all(|w| w[0].1 >= w[1].1));
            // A filter removes results, never reorders the rest.
            let even = |s: u32| s.is_multiple_of(2);
            let filtered = index.search(&q.join(" "), 100, Some(&even));
            let expect: Vec<(u32, f32)> = got.iter().copied().filter(|(s, _)| s.is_multiple_of(2)).collect();
            assert_eq!(filtered, expect);
        }
    }
}
