//! Context cues: words around a candidate that make it more or less likely to be what its digits
//! say. The nearest cue before the candidate decides (so "订单号 123…，卡号 6222…" scores the card
//! by 卡号, not by 订单号); a positive cue right after it also counts.

use super::EntityKind;

/// How much the nearest positive or negative cue moves the confidence.
pub(crate) const POSITIVE_BOOST: f32 = 0.3;
pub(crate) const NEGATIVE_PENALTY: f32 = 0.4;
/// A currency sign before or a unit after the number: it is an amount, not an identifier.
pub(crate) const AMOUNT_PENALTY: f32 = 0.5;

const ID_CUES: &[&str] = &[
    "身份证",
    "证件",
    "公民身份",
    "居民身份",
    "身份号",
    "id card",
    "id number",
    "id no",
    "identity",
    "national id",
    "resident id",
];
const PHONE_CUES: &[&str] = &[
    "手机", "电话", "联系", "致电", "来电", "热线", "座机", "拨打", "号码", "tel", "phone", "mobile", "call",
    "contact", "fax", "传真",
];
const CARD_CUES: &[&str] = &[
    "卡号",
    "银行卡",
    "信用卡",
    "借记卡",
    "储蓄卡",
    "账号",
    "账户",
    "帐号",
    "帐户",
    "银联",
    "转账",
    "收款",
    "付款",
    "扣款",
    "card",
    "account",
    "acct",
    "a/c",
    "visa",
    "mastercard",
    "amex",
    "unionpay",
    "pan",
];
const USCC_CUES: &[&str] = &[
    "统一社会信用代码",
    "信用代码",
    "社会信用",
    "营业执照",
    "企业",
    "公司",
    "uscc",
    "credit code",
    "business licen",
    "registration",
];
const EMAIL_CUES: &[&str] = &["邮箱", "邮件", "email", "e-mail", "mail"];
const IBAN_CUES: &[&str] = &[
    "iban",
    "账户",
    "account",
    "swift",
    "bic",
    "transfer",
    "汇款",
    "payee",
    "beneficiary",
];
const SSN_CUES: &[&str] = &["ssn", "social security", "社会安全", "taxpayer", "tin"];
const IP_CUES: &[&str] = &[
    "ip",
    "地址",
    "address",
    "服务器",
    "server",
    "host",
    "登录",
    "login",
    "访问",
    "client",
];

/// Words that label a number as something other than personal data.
const NEGATIVE_CUES: &[&str] = &[
    "订单",
    "单号",
    "流水号",
    "交易号",
    "交易编号",
    "合同编号",
    "合同号",
    "发票",
    "工单",
    "序列号",
    "批次",
    "编号",
    "版本",
    "股票代码",
    "证券代码",
    "order",
    "invoice",
    "ref",
    "reference",
    "txn",
    "transaction id",
    "tracking",
    "isin",
    "cusip",
    "sedol",
    "serial",
    "version",
    "ticket",
    "batch",
    "case no",
    "policy no",
];

/// Currency signs and codes that make the following number an amount.
const CURRENCY_BEFORE: &[&str] = &[
    "¥", "￥", "$", "€", "£", "rmb", "cny", "usd", "eur", "hkd", "gbp", "jpy",
];
/// Units that make the preceding number an amount or a quantity.
const UNIT_AFTER: &[&str] = &["元", "%", "％", "股", "万", "亿", "美元", "港元", "bp", "手", "份"];

fn cues(kind: EntityKind) -> &'static [&'static str] {
    match kind {
        EntityKind::CnResidentId => ID_CUES,
        EntityKind::CnMobile | EntityKind::CnLandline => PHONE_CUES,
        EntityKind::BankCard | EntityKind::CreditCard => CARD_CUES,
        EntityKind::Uscc => USCC_CUES,
        EntityKind::Email => EMAIL_CUES,
        EntityKind::Iban => IBAN_CUES,
        EntityKind::UsSsn => SSN_CUES,
        EntityKind::Ipv4 | EntityKind::Ipv6 => IP_CUES,
    }
}

/// Confidence adjustment for a candidate of `kind` at `start..end` in `text`, looking at up to
/// `window` characters before it and `window / 2` after it.
pub(crate) fn adjustment(text: &str, start: usize, end: usize, kind: EntityKind, window: usize) -> f32 {
    let before = lower(tail_chars(&text[..start], window));
    let after = lower(head_chars(&text[end..], window.div_ceil(2)));
    let mut adj = 0.0;
    let positive_at = last_occurrence(&before, cues(kind));
    let negative_at = last_occurrence(&before, NEGATIVE_CUES);
    match (positive_at, negative_at) {
        (Some(p), Some(n)) if n > p => adj -= NEGATIVE_PENALTY,
        (Some(_), _) => adj += POSITIVE_BOOST,
        (None, Some(_)) => adj -= NEGATIVE_PENALTY,
        (None, None) if first_occurrence(&after, cues(kind)) => adj += POSITIVE_BOOST / 2.0,
        (None, None) => {}
    }
    if is_amount(&before, &after) {
        adj -= AMOUNT_PENALTY;
    }
    adj
}

/// A currency right before (spaces allowed) or a unit right after the number.
fn is_amount(before: &str, after: &str) -> bool {
    let before = before.trim_end();
    let after = after.trim_start();
    CURRENCY_BEFORE.iter().any(|c| before.ends_with(c)) || UNIT_AFTER.iter().any(|u| after.starts_with(u))
}

/// End position of the cue that occurs last in `hay` (ASCII cues must not sit inside a word:
/// "tin" must not fire inside "setting").
fn last_occurrence(hay: &str, words: &[&str]) -> Option<usize> {
    words
        .iter()
        .filter_map(|w| {
            hay.rmatch_indices(w)
                .find(|&(i, _)| word_bounded(hay, i, i + w.len()))
                .map(|(i, _)| i + w.len())
        })
        .max()
}

fn first_occurrence(hay: &str, words: &[&str]) -> bool {
    words
        .iter()
        .any(|w| hay.match_indices(w).any(|(i, _)| word_bounded(hay, i, i + w.len())))
}

/// Non-ASCII cues (Chinese) need no word boundary; ASCII cues must not touch ASCII letters.
fn word_bounded(hay: &str, start: usize, end: usize) -> bool {
    let is_ascii_word = hay[start..end].bytes().all(|b| b.is_ascii());
    if !is_ascii_word {
        return true;
    }
    let before_ok = hay[..start]
        .chars()
        .next_back()
        .is_none_or(|c| !c.is_ascii_alphabetic());
    let after_ok = hay[end..].chars().next().is_none_or(|c| !c.is_ascii_alphabetic());
    before_ok && after_ok
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

fn tail_chars(s: &str, n: usize) -> &str {
    match s.char_indices().rev().nth(n.saturating_sub(1)) {
        Some((i, _)) if n > 0 => &s[i..],
        _ if n == 0 => "",
        _ => s,
    }
}

fn head_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cut_on_char_boundaries() {
        assert_eq!(tail_chars("客户卡号", 2), "卡号");
        assert_eq!(tail_chars("ab", 5), "ab");
        assert_eq!(tail_chars("ab", 0), "");
        assert_eq!(head_chars("元整", 1), "元");
    }

    #[test]
    fn nearest_cue_wins() {
        let t = "订单号 1，卡号 6222";
        let start = t.find("6222").unwrap();
        assert!(adjustment(t, start, t.len(), EntityKind::BankCard, 24) > 0.0);
        let t = "卡号已更新，订单号 6222";
        let start = t.find("6222").unwrap();
        assert!(adjustment(t, start, t.len(), EntityKind::BankCard, 24) < 0.0);
    }

    #[test]
    fn ascii_cues_need_word_boundaries() {
        let t = "the setting 123456789";
        let start = t.find("123").unwrap();
        assert_eq!(adjustment(t, start, t.len(), EntityKind::UsSsn, 24), 0.0);
        let t = "amount ¥ 13800138000";
        let start = t.find("138").unwrap();
        assert!(adjustment(t, start, t.len(), EntityKind::CnMobile, 24) < 0.0);
    }
}
