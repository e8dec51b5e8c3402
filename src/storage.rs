//! Counts that survive a restart (`--storage.path DIR`).
//!
//! After every successful poll and at shutdown each project's poller writes what it counts
//! with: its whole [`Tracker`] (the executions it tracks, windows, counter values, finished
//! executions kept for late webhooks) and the webhook dedupe window. One file per project,
//! written atomically: a temporary file in the same directory, fsync, rename over the old
//! one, fsync of the directory. A crash at any point leaves the previous file or the new
//! one, never a mix.
//!
//! At start a file is used only if it is this format and version, belongs to the same
//! project (the same name and a fingerprint of the API key, never the key itself) and was
//! saved less than [`MAX_AGE`] ago. Counters then continue from their saved values, so
//! Prometheus sees no reset, and the first poll counts what started and finished while the
//! exporter was down, as after an outage. Anything else (missing, truncated, corrupt, another
//! version or project, too old) is a warning and a fresh start; a file that cannot be used is
//! kept aside as `<file>.bad-<unix seconds>`, never deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::clock::{Micros, from_micros, micros};
use crate::kapso::ApiKey;
use crate::poller::tracker::Tracker;
use crate::webhook::Dedupe;

/// What the file says it is.
pub const FORMAT: &str = "kapso-exporter-state";
/// The version of the file's layout; another version is not read.
pub const VERSION: u32 = 1;
/// The oldest state restored. Older, the executions it tracks may have been deleted by
/// Kapso's retention and the windows would be long to list; a fresh start is more honest.
pub const MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// What is saved of one project.
#[derive(Debug, Serialize, Deserialize)]
pub struct Saved {
    pub tracker: Tracker,
    /// The webhook dedupe window, when webhooks are on.
    pub deliveries: Option<Dedupe>,
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    format: String,
    version: u32,
    project: String,
    key_fingerprint: String,
    /// Unix microseconds.
    saved_at: Micros,
    state: T,
}

/// The header of a file, read before its state.
#[derive(Deserialize)]
struct Header {
    format: String,
    version: u32,
    project: String,
    key_fingerprint: String,
    saved_at: Micros,
}

/// What [`Store::load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// A state of this project, saved at that time.
    Restored(Box<Saved>, OffsetDateTime),
    /// No file: the first start on this path.
    Nothing,
    /// A file that cannot be used, and why (one line); it was kept aside.
    Fresh(String),
}

/// One project's state file.
#[derive(Clone, Debug)]
pub struct Store {
    file: PathBuf,
    project: String,
    fingerprint: String,
    /// The size of the last file read or encoded (shared by the clones): the next encoding
    /// starts with room for it, so its buffer is not copied as it grows. At L a buffer
    /// doubling past 64 MiB held both copies at once, on top of the state.
    size_hint: Arc<AtomicUsize>,
}

/// A fingerprint of the API key: enough to tell two projects apart, useless to recover it.
pub fn fingerprint(key: &ApiKey) -> String {
    let mut input = b"kapso-exporter state v1\0".to_vec();
    input.extend_from_slice(key.expose().as_bytes());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The file name of a project: its name where that is a safe file name, else a hash of it.
fn file_name(project: &str) -> String {
    let safe = !project.is_empty()
        && project.len() <= 100
        && !project.starts_with('.')
        && project
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if safe {
        format!("{project}.state.json")
    } else {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, project.as_bytes());
        let hex: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("project-{hex}.state.json")
    }
}

impl Store {
    pub fn new(dir: &Path, project: &str, key: &ApiKey) -> Self {
        Self {
            file: dir.join(file_name(project)),
            project: project.to_owned(),
            fingerprint: fingerprint(key),
            size_hint: Arc::default(),
        }
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The saved state, if it can be used at `now`.
    pub fn load(&self, now: OffsetDateTime) -> Loaded {
        let bytes = match fs::read(&self.file) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Nothing,
            Err(e) => return Loaded::Fresh(format!("cannot read {}: {e}", self.file.display())),
        };
        self.size_hint.store(bytes.len(), Ordering::Relaxed);
        match self.check(&bytes, now) {
            Ok(restored) => restored,
            Err(why) => {
                let kept = self.keep_aside(now);
                Loaded::Fresh(format!("{why}; {kept}"))
            }
        }
    }

    fn check(&self, bytes: &[u8], now: OffsetDateTime) -> Result<Loaded, String> {
        let header: Header = serde_json::from_slice(bytes)
            .map_err(|e| format!("the state file is truncated or corrupt ({e})"))?;
        if header.format != FORMAT {
            return Err(format!(
                "{:?} is not a state file of this exporter",
                header.format
            ));
        }
        if header.version != VERSION {
            return Err(format!(
                "the state file has version {}, this exporter reads {VERSION}",
                header.version
            ));
        }
        if header.project != self.project || header.key_fingerprint != self.fingerprint {
            return Err(format!(
                "the state file belongs to another project ({:?} or another API key)",
                header.project
            ));
        }
        let age = micros(now).saturating_sub(header.saved_at);
        let max = i64::try_from(MAX_AGE.as_micros()).unwrap_or(i64::MAX);
        if !(0..=max).contains(&age) {
            return Err(format!(
                "the state file was saved at {}, not within {} before now",
                from_micros(header.saved_at),
                humantime::format_duration(MAX_AGE)
            ));
        }
        let envelope: Envelope<Saved> = serde_json::from_slice(bytes)
            .map_err(|e| format!("the state file's state cannot be read ({e})"))?;
        Ok(Loaded::Restored(
            Box::new(envelope.state),
            from_micros(header.saved_at),
        ))
    }

    /// Renames an unusable file out of the way; says what became of it.
    fn keep_aside(&self, now: OffsetDateTime) -> String {
        let mut aside = self.file.clone().into_os_string();
        aside.push(format!(".bad-{}", now.unix_timestamp()));
        let aside = PathBuf::from(aside);
        match fs::rename(&self.file, &aside) {
            Ok(()) => format!("kept aside as {}", aside.display()),
            Err(e) => format!("could not move it aside: {e}"),
        }
    }

    /// `saved` as the file's bytes, stamped `now`.
    pub fn encode(&self, saved: &SavedRef<'_>, now: OffsetDateTime) -> Vec<u8> {
        let envelope = Envelope {
            format: FORMAT.to_owned(),
            version: VERSION,
            project: self.project.clone(),
            key_fingerprint: self.fingerprint.clone(),
            saved_at: micros(now),
            state: saved,
        };
        let hint = self.size_hint.load(Ordering::Relaxed);
        let mut bytes = Vec::with_capacity(hint + hint / 8);
        // Serializing maps of strings and numbers into memory cannot fail.
        if serde_json::to_writer(&mut bytes, &envelope).is_err() {
            bytes.clear();
        }
        self.size_hint.store(bytes.len(), Ordering::Relaxed);
        bytes
    }

    /// Replaces the file with `bytes`, atomically.
    pub fn write(&self, bytes: &[u8]) -> io::Result<()> {
        self.write_with(bytes, None)
    }

    /// [`Store::write`], stopping (as a crash would) after `crash_after` bytes of the
    /// temporary file: for tests of what a crash during a write leaves.
    pub fn write_with(&self, bytes: &[u8], crash_after: Option<usize>) -> io::Result<()> {
        let dir = self.file.parent().unwrap_or(Path::new("."));
        let mut tmp = self.file.clone().into_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            if let Some(n) = crash_after {
                f.write_all(&bytes[..n.min(bytes.len())])?;
                return Err(io::Error::other("simulated crash during the write"));
            }
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &self.file)?;
            // The rename is durable once the directory is.
            File::open(dir)?.sync_all()
        })();
        if result.is_err() && crash_after.is_none() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Removes temporary files a crash left behind.
    pub fn clean_temporaries(&self) {
        let (Some(dir), Some(name)) = (self.file.parent(), self.file.file_name()) else {
            return;
        };
        let prefix = format!("{}.tmp-", name.to_string_lossy());
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

/// What is saved, borrowed (the tracker and the dedupe window are locked while it encodes).
#[derive(Serialize)]
pub struct SavedRef<'a> {
    pub tracker: &'a Tracker,
    pub deliveries: Option<&'a Dedupe>,
}

/// Creates `dir` if needed and checks that a file can be written there.
pub fn prepare(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".kapso-exporter-probe-{}", std::process::id()));
    File::create(&probe)?.sync_all()?;
    fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use time::macros::datetime;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "kapso-storage-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    const NOW: OffsetDateTime = datetime!(2026-11-24 12:00 UTC);

    fn save(store: &Store, at: OffsetDateTime) {
        let tracker = Tracker::new();
        let bytes = store.encode(
            &SavedRef {
                tracker: &tracker,
                deliveries: None,
            },
            at,
        );
        store.write(&bytes).unwrap();
    }

    #[test]
    fn an_encoding_starts_with_room_for_the_last_file_so_it_never_regrows() {
        let dir = temp_dir("hint");
        let store = Store::new(&dir, "default", &ApiKey::new("sk-a"));
        let tracker = Tracker::new();
        let saved = SavedRef {
            tracker: &tracker,
            deliveries: None,
        };
        let first = store.encode(&saved, NOW);
        // A clone (what the poller moves to the writing thread) shares the hint.
        let second = store.clone().encode(&saved, NOW);
        assert_eq!(first, second);
        let room = first.len() + first.len() / 8;
        assert_eq!(second.capacity(), room, "allocated once, for the last size");
        store.write(&first).unwrap();
        let restarted = Store::new(&dir, "default", &ApiKey::new("sk-a"));
        assert!(matches!(restarted.load(NOW), Loaded::Restored(..)));
        assert_eq!(restarted.encode(&saved, NOW).capacity(), room);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_saved_state_loads_for_the_same_project_only() {
        let dir = temp_dir("same");
        let key = ApiKey::new("sk-a");
        let store = Store::new(&dir, "default", &key);
        assert!(matches!(store.load(NOW), Loaded::Nothing));
        save(&store, NOW);
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(!text.contains("sk-a"), "the key is never written");
        assert!(matches!(
            store.load(NOW + Duration::from_secs(60)),
            Loaded::Restored(_, t) if t == NOW
        ));
        // Another key, then another name: fresh, the file kept aside.
        let other = Store::new(&dir, "default", &ApiKey::new("sk-b"));
        assert!(matches!(other.load(NOW), Loaded::Fresh(why) if why.contains("another project")));
        assert!(!store.path().exists());
        save(&store, NOW);
        let renamed = Store::new(&dir, "prod", &key);
        fs::rename(store.path(), renamed.path()).unwrap();
        assert!(matches!(renamed.load(NOW), Loaded::Fresh(_)));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_corrupt_foreign_or_old_files_start_fresh_and_are_kept_aside() {
        let dir = temp_dir("bad");
        let store = Store::new(&dir, "default", &ApiKey::new("sk-a"));
        save(&store, NOW);
        let good = fs::read(store.path()).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", good[..good.len() / 2].to_vec()),
            ("empty", Vec::new()),
            ("garbage", b"\x00\xffnot json".to_vec()),
            (
                "another version",
                String::from_utf8(good.clone())
                    .unwrap()
                    .replacen("\"version\":1", "\"version\":99", 1)
                    .into_bytes(),
            ),
            (
                "not ours",
                br#"{"format":"something-else","version":1,"project":"default","key_fingerprint":"","saved_at":0,"state":{}}"#.to_vec(),
            ),
            (
                "a state that does not decode",
                String::from_utf8(good.clone())
                    .unwrap()
                    .replacen("\"state\":{", "\"state\":{\"tracker\":7,", 1)
                    .into_bytes(),
            ),
        ];
        for (what, bytes) in cases {
            fs::write(store.path(), &bytes).unwrap();
            match store.load(NOW) {
                Loaded::Fresh(why) => {
                    assert!(!why.contains('\n'), "{what}: one line: {why}");
                    assert!(why.contains("kept aside"), "{what}: {why}");
                }
                other => panic!("{what}: {other:?}"),
            }
            assert!(!store.path().exists(), "{what}: moved aside");
        }
        let kept = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".bad-")
            })
            .count();
        assert!(kept >= 1);
        // Too old, and from the future.
        save(&store, NOW - MAX_AGE - Duration::from_secs(1));
        assert!(matches!(store.load(NOW), Loaded::Fresh(_)));
        save(&store, NOW + Duration::from_secs(3600));
        assert!(matches!(store.load(NOW), Loaded::Fresh(_)));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_crash_during_a_write_leaves_the_previous_state() {
        let dir = temp_dir("crash");
        let store = Store::new(&dir, "default", &ApiKey::new("sk-a"));
        save(&store, NOW);
        let before = fs::read(store.path()).unwrap();
        let tracker = Tracker::new();
        let newer = store.encode(
            &SavedRef {
                tracker: &tracker,
                deliveries: None,
            },
            NOW + Duration::from_secs(60),
        );
        for cut in [0, 1, newer.len() / 2, newer.len()] {
            assert!(store.write_with(&newer, Some(cut)).is_err());
            assert_eq!(fs::read(store.path()).unwrap(), before, "cut at {cut}");
            assert!(matches!(store.load(NOW), Loaded::Restored(_, t) if t == NOW));
        }
        store.clean_temporaries();
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "only the state file"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_that_cannot_happen_is_an_error_not_a_panic() {
        let dir = temp_dir("ro");
        let store = Store::new(&dir.join("missing/deeper"), "default", &ApiKey::new("sk-a"));
        assert!(store.write(b"{}").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn project_names_become_safe_file_names() {
        assert_eq!(file_name("default"), "default.state.json");
        for odd in ["../etc/passwd", "a/b", ".hidden", "two words", ""] {
            let f = file_name(odd);
            assert!(
                f.starts_with("project-") && !f.contains('/'),
                "{odd:?} -> {f}"
            );
        }
        assert_ne!(file_name("a/b"), file_name("a/c"));
    }
}
