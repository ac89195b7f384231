//! Keeps every record: `on-batch` returns the empty "keep all" answer without
//! touching the records. The baseline for plugin overhead benchmarks.

use switchyard_plugin_sdk::{export_plugin, plugin_info, Plugin, PluginInfo, Site};

#[derive(Default)]
pub struct KeepAll;

impl Plugin for KeepAll {
    fn init(&mut self, _config: &str, _sites: &[Site]) -> Result<PluginInfo, String> {
        // "batch" so the host really calls on-batch (that call is what the
        // benchmarks measure); the default on_batch answers "keep all".
        Ok(plugin_info(
            "keep-all",
            env!("CARGO_PKG_VERSION"),
            &["batch"],
        ))
    }
}

export_plugin!(KeepAll);
