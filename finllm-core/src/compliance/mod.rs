//! Compliance controls around generation: what a bank needs before a model may see a prompt and
//! before a caller may see an answer.
//!
//! - [`pii`]: detect personal identifiers (Chinese resident IDs, phones, bank and credit cards,
//!   unified social credit codes, e-mail, IBAN, US SSN, IP addresses) with checksum validation and
//!   context scoring; pseudonymise them reversibly (`<ID_1>`, kept in a per-request [`pii::Vault`])
//!   or redact them irreversibly for logs.
//! - [`policy`]: an output filter driven by TOML rule packs (keywords, regexes, semantic
//!   similarity) that also works on token streams, never releasing text a rule could still match.
//! - [`audit`]: an append-only, CRC-framed, hash-chained audit log with group commit, torn-tail
//!   recovery, rotation and verification.
//! - [`drift`]: a KL-divergence monitor of the token distribution of recent inputs.
//! - [`guard`]: all of the above wrapped around a generation request ([`Guard`]; a guarded
//!   [`Request`](crate::Request) carries one).
//!
//! ```
//! use finllm_core::compliance::pii::{PiiConfig, PiiDetector};
//! let detector = PiiDetector::new(PiiConfig::default())?;
//! let (masked, vault) = detector.pseudonymise("客户身份证号11010519491231002X，手机13800138000");
//! assert_eq!(masked, "客户身份证号<ID_1>，手机<PHONE_1>");
//! assert_eq!(vault.unmask("<PHONE_1> 已核实"), "13800138000 已核实");
//! # Ok::<(), finllm_core::Error>(())
//! ```

pub mod audit;
pub mod drift;
pub mod guard;
pub mod pii;
pub mod policy;

pub use audit::{AuditConfig, AuditLog, AuditRecord, FsyncPolicy, RecordReceipt, VerifyReport};
pub use drift::{DriftConfig, DriftMetrics, DriftMonitor};
pub use guard::{Guard, GuardConfig, GuardReport, GuardSession, RequestInfo};
pub use pii::{Entity, EntityKind, PiiConfig, PiiDetector, Vault};
pub use policy::{Action, Category, Decision, Embedder, Policy, RuleMatch, StreamFilter, Verdict};
