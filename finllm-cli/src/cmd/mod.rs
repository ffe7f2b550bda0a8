//! One module per subcommand (`policy check` and `audit verify|show` under their group's
//! name); `main` parses the command line and calls them.

pub(crate) mod audit;
pub(crate) mod bench;
pub(crate) mod chat;
pub(crate) mod compare_devices;
pub(crate) mod embed;
pub(crate) mod explain;
pub(crate) mod generate;
pub(crate) mod info;
pub(crate) mod perplexity;
pub(crate) mod pii;
pub(crate) mod policy;
pub(crate) mod quantize;
pub(crate) mod rag;
pub(crate) mod synth;
