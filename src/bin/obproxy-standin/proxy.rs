//! The running process's shared state: its line and version, its config and where it is kept, whether it accepts, and the hot-upgrade flags obproxy keeps in `ObHotUpgraderInfo`.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, watch};

use crate::config::{Backend, Config, SetError};
use crate::exporter::Exporter;
use crate::listener::Fds;
use crate::local_config::{self, Layout};
use crate::native::HotUpgrade;
use crate::profile::Line;

/// Whether the accept loops call `accept()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepting {
    Yes,
    /// A native restart stopped accepting until its child confirms or fails
    /// (`disable_net_accept` / `enable_net_accept`).
    Paused,
    /// A drain: never again.
    Stopped,
}

pub struct Proxy {
    pub line: Line,
    pub version: String,
    pub layout: Layout,
    /// `argv[0]` as this process was run with: a native restart executes it again.
    pub argv0: OsString,
    pub backend: Option<Arc<Backend>>,
    config: Mutex<Config>,
    accepting: watch::Sender<Accepting>,
    /// `parent_hot_upgrade_flag_`: set when a SIGUSR1 is acted on (or a native restart timed
    /// out), after which SIGUSR1 is ignored (v4.3.1:src/obproxy/ob_proxy_main.cpp:872-895).
    parent_flag: AtomicBool,
    /// `is_parent_`: a fresh start, or an inherited one once it signalled readiness
    /// (v4.3.1:src/obproxy/ob_proxy.cpp:454-462); only such a process acts on
    /// `proxy_local_cmd` (v4.3.1:src/obproxy/obutils/ob_hot_upgrade_processor.cpp:1669-1685).
    is_parent: AtomicBool,
    /// The listener fds a native child is handed.
    fds: Mutex<Fds>,
    /// `proxy_local_cmd = 1` asked for a quick exit.
    pub local_exit: Notify,
    /// The native restart's state (see `native`).
    pub hot: Mutex<HotUpgrade>,
    /// The Prometheus exporter, once started; a native restart closes and reopens it.
    pub exporter: tokio::sync::Mutex<Option<Exporter>>,
}

impl Proxy {
    pub fn new(
        config: Config,
        version: String,
        layout: Layout,
        argv0: OsString,
        backend: Option<Backend>,
    ) -> Arc<Self> {
        Arc::new(Proxy {
            line: config.line(),
            version,
            layout,
            argv0,
            backend: backend.map(Arc::new),
            config: Mutex::new(config),
            accepting: watch::channel(Accepting::Yes).0,
            parent_flag: AtomicBool::new(false),
            is_parent: AtomicBool::new(false),
            fds: Mutex::new(Fds::default()),
            local_exit: Notify::new(),
            hot: Mutex::new(HotUpgrade::default()),
            exporter: tokio::sync::Mutex::new(None),
        })
    }

    pub fn config(&self) -> MutexGuard<'_, Config> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `ALTER proxyconfig SET name = value`: the item changes at once and is written to the
    /// local config; a failed write puts the old value back
    /// (v4.3.1:src/obproxy/cmd/ob_alter_config_handler.cpp:122-181).
    pub fn alter(&self, name: &str, value: &str) -> Result<(), AlterError> {
        let mut config = self.config();
        let old = config.get(name).to_owned();
        config.set(name, value).map_err(AlterError::Refused)?;
        if let Err(e) = local_config::store_item(&self.layout, &config, name) {
            let _ = config.set(name, &old);
            return Err(AlterError::Store(e.to_string()));
        }
        Ok(())
    }

    pub fn accepting(&self) -> watch::Receiver<Accepting> {
        self.accepting.subscribe()
    }

    pub fn is_accepting(&self) -> bool {
        *self.accepting.borrow() == Accepting::Yes
    }

    /// Pauses or resumes accepting; a drain's stop is final.
    pub fn set_accepting(&self, to: Accepting) {
        self.accepting.send_if_modified(|now| {
            let change = *now != Accepting::Stopped && *now != to;
            if change {
                *now = to;
            }
            change
        });
    }

    /// Whether a SIGUSR1 arriving now is acted on; if so, later ones will not be.
    pub fn act_on_sigusr1(&self) -> bool {
        !self.parent_flag.swap(true, Ordering::SeqCst)
    }

    pub fn set_parent_flag(&self, on: bool) {
        self.parent_flag.store(on, Ordering::SeqCst);
    }

    pub fn parent_flag(&self) -> bool {
        self.parent_flag.load(Ordering::SeqCst)
    }

    pub fn set_is_parent(&self) {
        self.is_parent.store(true, Ordering::SeqCst);
    }

    pub fn is_parent(&self) -> bool {
        self.is_parent.load(Ordering::SeqCst)
    }

    pub fn set_fds(&self, fds: Fds) {
        *self.fds.lock().unwrap_or_else(|e| e.into_inner()) = fds;
    }

    pub fn fds(&self) -> Fds {
        *self.fds.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
pub enum AlterError {
    Refused(SetError),
    Store(String),
}
