//! Observing the obproxy processes (CPU, memory, client sessions) on a thread
//! of its own. The supervisor never samples: it hands out pids and counters,
//! and whoever answers a status asks the sampler for usage no older than
//! [`MAX_AGE`]. A sample costs a kernel socket dump (it walks the whole TCP
//! established table, TIME_WAIT included: milliseconds on a busy host), so
//! every caller within [`MAX_AGE`] shares one, however many callers there are,
//! and nothing samples while nobody asks.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::agent::obproxy::procfs;

/// A sample younger than this answers a status; an older one is taken again.
pub const MAX_AGE: Duration = Duration::from_secs(1);
/// How long a status waits for a new sample before it answers with the last
/// one it has (or none): a host so loaded that a sample takes this long still
/// gets its answers.
pub const WAIT: Duration = Duration::from_secs(2);
/// The sampler thread's name: samples are taken there and nowhere else.
pub const THREAD: &str = "odp-sampler";

/// What to sample: the processes shown in a status and the SQL listeners
/// whose sessions they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub pids: Vec<u32>,
    pub listeners: Vec<SocketAddr>,
}

/// One process's usage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Percent of one core since the previous sample.
    pub cpu_percent: f32,
    pub memory_bytes: u64,
    /// Client connections it holds on the SQL listeners.
    pub open_connections: u32,
}

/// Usage of every process of a target, as of `taken_at`.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the sample began: it shows the processes as they were then or later.
    pub taken_at: Instant,
    pub target: Target,
    pub usage: HashMap<u32, Usage>,
}

impl Sample {
    pub fn age(&self) -> Duration {
        self.taken_at.elapsed()
    }

    fn answers(&self, target: &Target) -> bool {
        &self.target == target
    }
}

/// What the sampler thread asks of the system; behind a trait so a test can
/// make it slow or stuck.
pub trait Probe: Send + 'static {
    fn usage(&mut self, target: &Target) -> HashMap<u32, Usage>;
}

/// The real one: sysinfo for CPU and memory, sock_diag and `/proc/<pid>/fd`
/// for sessions.
pub struct SystemProbe {
    /// None where sysinfo has no support for this platform.
    system: Option<sysinfo::System>,
}

impl Default for SystemProbe {
    fn default() -> Self {
        Self {
            system: sysinfo::System::new().ok(),
        }
    }
}

impl Probe for SystemProbe {
    fn usage(&mut self, target: &Target) -> HashMap<u32, Usage> {
        let pids: Vec<sysinfo::Pid> = target
            .pids
            .iter()
            .map(|p| sysinfo::Pid::from_u32(*p))
            .collect();
        if let Some(system) = self.system.as_mut() {
            system.refresh_processes_specifics(
                sysinfo::ProcessesToUpdate::Some(&pids),
                true,
                sysinfo::ProcessRefreshKind::nothing()
                    .with_cpu()
                    .with_memory(),
            );
        }
        let sessions = procfs::sessions_on(&target.listeners);
        target
            .pids
            .iter()
            .map(|&pid| {
                let process = self
                    .system
                    .as_ref()
                    .and_then(|s| s.process(sysinfo::Pid::from_u32(pid)));
                let usage = Usage {
                    cpu_percent: process.map_or(0.0, |p| p.cpu_usage()),
                    memory_bytes: process.map_or(0, |p| p.memory()),
                    open_connections: procfs::client_connections(pid, &sessions),
                };
                (pid, usage)
            })
            .collect()
    }
}

/// Cloneable access to the sampler thread, which lives as long as any clone.
#[derive(Clone)]
pub struct Sampler {
    shared: Arc<Shared>,
    latest: watch::Receiver<Option<Arc<Sample>>>,
}

/// Closes the thread's queue when the last [`Sampler`] goes.
struct Shared {
    queue: Arc<Queue>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let mut q = self.queue.lock();
        q.closed = true;
        self.queue.wake.notify_all();
    }
}

/// The one request the thread has to serve next: requests made while it
/// samples coalesce into it.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    next: Option<Target>,
    closed: bool,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sampler {
    /// Starts the sampler thread with `probe`.
    pub fn start(mut probe: impl Probe) -> std::io::Result<Self> {
        let queue = Arc::new(Queue::default());
        let (tx, latest) = watch::channel(None);
        let thread_queue = queue.clone();
        std::thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || {
                loop {
                    let target = {
                        let mut q = thread_queue.lock();
                        loop {
                            if q.closed {
                                return;
                            }
                            if let Some(t) = q.next.take() {
                                break t;
                            }
                            q = thread_queue.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    let taken_at = Instant::now();
                    let usage = probe.usage(&target);
                    tx.send_replace(Some(Arc::new(Sample {
                        taken_at,
                        target,
                        usage,
                    })));
                }
            })?;
        Ok(Self {
            shared: Arc::new(Shared { queue }),
            latest,
        })
    }

    /// The last sample taken, whatever it shows and however old (never waits).
    pub fn latest(&self) -> Option<Arc<Sample>> {
        self.latest.borrow().clone()
    }

    /// A sample of `target` no older than [`MAX_AGE`], taken on the sampler
    /// thread if the last one is older or shows other processes. Waits at
    /// most [`WAIT`]; then answers with the last sample of `target` there is,
    /// however old (its age says so), or None.
    pub async fn sample(&self, target: &Target) -> Option<Arc<Sample>> {
        let current = self.latest.borrow().clone();
        if let Some(s) = current.as_ref()
            && s.answers(target)
            && s.age() <= MAX_AGE
        {
            return current;
        }
        let asked = Instant::now();
        {
            let mut q = self.shared.queue.lock();
            q.next = Some(target.clone());
            self.shared.queue.wake.notify_one();
        }
        let mut latest = self.latest.clone();
        let fresh = |s: &Option<Arc<Sample>>| {
            s.as_ref()
                .is_some_and(|s| s.taken_at >= asked && s.answers(target))
        };
        match tokio::time::timeout(WAIT, latest.wait_for(fresh)).await {
            Ok(Ok(s)) => s.clone(),
            _ => current.filter(|s| s.answers(target)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    };

    use super::*;

    /// Counts samples and where they ran; optionally blocks until released.
    struct Recording {
        taken: Arc<AtomicUsize>,
        threads: Arc<Mutex<Vec<String>>>,
        gate: Option<mpsc::Receiver<()>>,
    }

    impl Probe for Recording {
        fn usage(&mut self, target: &Target) -> HashMap<u32, Usage> {
            if let Some(gate) = &self.gate {
                let _ = gate.recv();
            }
            self.taken.fetch_add(1, Ordering::SeqCst);
            let name = std::thread::current().name().unwrap_or("").to_string();
            self.threads.lock().unwrap().push(name);
            target
                .pids
                .iter()
                .map(|&p| {
                    let usage = Usage {
                        open_connections: 7,
                        ..Default::default()
                    };
                    (p, usage)
                })
                .collect()
        }
    }

    fn target(pids: &[u32]) -> Target {
        Target {
            pids: pids.to_vec(),
            listeners: vec!["127.0.0.1:2883".parse().unwrap()],
        }
    }

    #[tokio::test]
    async fn callers_within_the_max_age_share_one_sample_taken_on_the_sampler_thread() {
        let taken = Arc::new(AtomicUsize::new(0));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let sampler = Sampler::start(Recording {
            taken: taken.clone(),
            threads: threads.clone(),
            gate: None,
        })
        .unwrap();
        let t = target(&[10, 11]);
        let began = Instant::now();
        let answers = futures::future::join_all((0..200).map(|_| sampler.sample(&t))).await;
        for a in &answers {
            assert_eq!(a.as_ref().unwrap().usage[&11].open_connections, 7);
        }
        for _ in 0..200 {
            sampler.sample(&t).await.unwrap();
        }
        // Shared, not one per caller: one sample per MAX_AGE, plus one for the
        // callers that asked while the first was being taken (a sample taken
        // before a caller asked is no answer to it, and the sampler thread
        // can start on the first request while the others are still being
        // made), more only if a busy machine stretched them over MAX_AGE.
        let allowed = 2 + (began.elapsed().as_secs_f64() / MAX_AGE.as_secs_f64()) as usize;
        let shared = taken.load(Ordering::SeqCst);
        assert!(
            (1..=allowed).contains(&shared),
            "{shared} samples for 400 callers in {:?}",
            began.elapsed()
        );
        // Another process set is sampled anew.
        let other = sampler.sample(&target(&[12])).await.unwrap();
        assert!(other.usage.contains_key(&12));
        assert_eq!(taken.load(Ordering::SeqCst), shared + 1);
        assert!(threads.lock().unwrap().iter().all(|n| n == THREAD));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_sample_delays_a_caller_by_at_most_the_wait() {
        let (release, gate) = mpsc::channel();
        let sampler = Sampler::start(Recording {
            taken: Default::default(),
            threads: Default::default(),
            gate: Some(gate),
        })
        .unwrap();
        // Paused time: the wait elapses at once while the probe stays stuck.
        let answer = sampler.sample(&target(&[10])).await;
        assert!(answer.is_none(), "no sample yet, and none invented");
        release.send(()).unwrap();
    }
}
