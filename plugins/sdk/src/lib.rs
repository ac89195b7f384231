//! Guest SDK for Switchyard WASM policy plugins.
//!
//! The host calls a plugin once per topic-partition batch (world
//! `switchyard:plugin/plugin@0.1.0`, `wit/plugin.wit`). Record bytes travel in
//! one buffer plus two flat `u32` descriptor tables; this crate turns them
//! into a typed, bounds-checked view ([`Batch`], [`Record`]) and wires the
//! component exports to the [`Plugin`] trait:
//!
//! ```ignore
//! use switchyard_plugin_sdk::*;
//!
//! #[derive(Default)]
//! struct DropEmpty;
//!
//! impl Plugin for DropEmpty {
//!     fn init(&mut self, _config: &str, _sites: &[Site]) -> Result<PluginInfo, String> {
//!         Ok(plugin_info("drop-empty", "0.1.0", &["batch"]))
//!     }
//!     fn on_batch(&self, batch: &Batch) -> Result<Vec<Decision>, String> {
//!         Ok(batch
//!             .records()?
//!             .map(|r| if r.value == Some(&[][..]) { Decision::Drop } else { Decision::Keep })
//!             .collect())
//!     }
//! }
//!
//! export_plugin!(DropEmpty);
//! ```

mod view;

pub use view::{Batch, DecodeError, Headers, Record, Records, HEADER_WORDS, NULL, RECORD_WORDS};

/// The wit-bindgen output for the world (types, host imports, `Guest`).
/// Plugin authors normally only need the re-exports at the crate root.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../wit",
        additional_derives: [PartialEq],
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "switchyard_plugin_sdk::bindings",
    });
}

pub use bindings::switchyard::plugin::types::{
    BatchMeta, Conflict, Decision, Direction, LogLevel, PluginInfo, Resolution, Route, Site, Stage,
    Version,
};

/// A Switchyard policy plugin. Implement it on a `Default` type and pass the
/// type to [`export_plugin!`].
///
/// State: the SDK keeps one value of the type per component instance. On
/// every `init` (load and config change) it builds a fresh `Self::default()`
/// and calls [`Plugin::init`] on it; only if that succeeds does the new value
/// replace the serving one (an error keeps the previous version serving, as
/// the host expects).
pub trait Plugin: Default + 'static {
    /// Parse the operator's config and name the plugin. `capabilities` in the
    /// returned info must list the exports that do real work ("batch",
    /// "resolve", "topic-name"); the host skips calls to the others.
    fn init(&mut self, config: &str, sites: &[Site]) -> Result<PluginInfo, String>;

    /// Decide on a batch: empty = keep every record unchanged, otherwise
    /// exactly one decision per record in batch order (the SDK checks the
    /// count). Default: keep all.
    fn on_batch(&self, batch: &Batch) -> Result<Vec<Decision>, String> {
        let _ = batch;
        Ok(Vec::new())
    }

    /// Conflict resolution, one resolution per conflict in order. Default:
    /// the incoming record wins.
    fn resolve(&self, batch: &Batch, conflicts: &[Conflict]) -> Result<Vec<Resolution>, String> {
        let _ = batch;
        Ok(accept_incoming(conflicts))
    }

    /// Rename a topic in the given direction; `None` = unchanged. Default: `None`.
    fn topic_name(&self, name: &str, direction: Direction) -> Option<String> {
        let _ = (name, direction);
        None
    }
}

/// `Resolution::Accept(incoming)` for every conflict.
pub fn accept_incoming(conflicts: &[Conflict]) -> Vec<Resolution> {
    conflicts
        .iter()
        .map(|c| Resolution::Accept(c.incoming.clone()))
        .collect()
}

/// The usual conflict rule shape: the incoming record is accepted (and its
/// version stored) when the key has no version yet or `wins(incoming,
/// existing)`; otherwise rejected. `wins` must accept a version against
/// itself (a retried write meets its own version).
pub fn resolve_by(
    conflicts: &[Conflict],
    wins: impl Fn(&Version, &Version) -> bool,
) -> Vec<Resolution> {
    conflicts
        .iter()
        .map(|c| match &c.existing {
            Some(e) if !wins(&c.incoming, e) => Resolution::Reject,
            _ => Resolution::Accept(c.incoming.clone()),
        })
        .collect()
}

/// Build a [`PluginInfo`].
pub fn plugin_info(name: &str, version: &str, capabilities: &[&str]) -> PluginInfo {
    PluginInfo {
        name: name.to_string(),
        version: version.to_string(),
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
    }
}

/// Log through the host. Only callable inside the component (on a native
/// target the import is not linked and this traps).
pub fn log(level: LogLevel, msg: &str) {
    bindings::switchyard::plugin::host::log(level, msg)
}

/// The host's clock in milliseconds (tests on the host may set it). Only
/// callable inside the component.
pub fn now_ms() -> i64 {
    bindings::switchyard::plugin::host::now_ms()
}

/// Implementation details of [`export_plugin!`]; not a stable API.
#[doc(hidden)]
pub mod __glue {
    use super::*;
    use std::cell::RefCell;

    pub use bindings::{Batch as RawBatch, BatchResult, Guest};

    /// Per-instance plugin state (a component instance is single-threaded
    /// and never re-entered).
    pub struct Slot<T: 'static>(pub &'static std::thread::LocalKey<RefCell<Option<T>>>);

    impl<T: Plugin> Slot<T> {
        pub fn init(&self, config: String, sites: Vec<Site>) -> Result<PluginInfo, String> {
            let mut fresh = T::default();
            let info = fresh.init(&config, &sites)?;
            self.0.with(|s| *s.borrow_mut() = Some(fresh));
            Ok(info)
        }

        fn with<R>(
            &self,
            what: &str,
            f: impl FnOnce(&T) -> Result<R, String>,
        ) -> Result<R, String> {
            self.0.with(|s| match &*s.borrow() {
                Some(p) => f(p),
                None => Err(format!("{what} called before a successful init")),
            })
        }

        pub fn on_batch(&self, raw: RawBatch) -> Result<BatchResult, String> {
            self.with("on-batch", |p| {
                let batch = Batch::new(&raw);
                let decisions = p.on_batch(&batch)?;
                check_count("on_batch", "decisions", decisions.len(), batch.len()?)?;
                Ok(BatchResult { decisions })
            })
        }

        pub fn resolve(
            &self,
            raw: RawBatch,
            conflicts: Vec<Conflict>,
        ) -> Result<Vec<Resolution>, String> {
            self.with("resolve", |p| {
                let batch = Batch::new(&raw);
                let out = p.resolve(&batch, &conflicts)?;
                if out.len() != conflicts.len() {
                    return Err(format!(
                        "resolve returned {} resolutions for {} conflicts",
                        out.len(),
                        conflicts.len()
                    ));
                }
                Ok(out)
            })
        }

        pub fn topic_name(&self, name: String, direction: Direction) -> Option<String> {
            self.0.with(|s| {
                s.borrow()
                    .as_ref()
                    .and_then(|p| p.topic_name(&name, direction))
            })
        }
    }

    pub fn check_count(func: &str, what: &str, got: usize, records: usize) -> Result<(), String> {
        if got == 0 || got == records {
            Ok(())
        } else {
            Err(format!(
                "{func} returned {got} {what} for {records} records (must be 0 or equal)"
            ))
        }
    }
}

/// Export a [`Plugin`] type as the component's `switchyard:plugin/plugin`
/// world. Use once, at the plugin crate's root.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __SWITCHYARD_PLUGIN: ::core::cell::RefCell<::core::option::Option<$ty>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            const __SLOT: $crate::__glue::Slot<$ty> = $crate::__glue::Slot(&__SWITCHYARD_PLUGIN);

            struct __SwitchyardExport;

            impl $crate::__glue::Guest for __SwitchyardExport {
                fn init(
                    config: ::std::string::String,
                    sites: ::std::vec::Vec<$crate::Site>,
                ) -> ::core::result::Result<$crate::PluginInfo, ::std::string::String> {
                    __SLOT.init(config, sites)
                }
                fn on_batch(
                    b: $crate::__glue::RawBatch,
                ) -> ::core::result::Result<$crate::__glue::BatchResult, ::std::string::String> {
                    __SLOT.on_batch(b)
                }
                fn resolve(
                    b: $crate::__glue::RawBatch,
                    conflicts: ::std::vec::Vec<$crate::Conflict>,
                ) -> ::core::result::Result<::std::vec::Vec<$crate::Resolution>, ::std::string::String> {
                    __SLOT.resolve(b, conflicts)
                }
                fn topic_name(
                    name: ::std::string::String,
                    direction: $crate::Direction,
                ) -> ::core::option::Option<::std::string::String> {
                    __SLOT.topic_name(name, direction)
                }
            }

            $crate::bindings::__export_plugin_world!(__SwitchyardExport with_types_in $crate::bindings);
        };
    };
}
