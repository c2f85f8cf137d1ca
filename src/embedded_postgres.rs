//! A private PostgreSQL cluster run from the machine's own binaries (the default when no
//! `DATABASE_URL` is given), listening only on a Unix socket inside its directory.
//!
//! Layout under the cluster directory: `data/` (PGDATA), `run/` (the socket), `postgres.log`.
//! When we run as root the cluster runs as the unprivileged `postgres` (or `nobody`) user,
//! because the server refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::unistd::{Uid, User};

/// The superuser `initdb` creates; connections over the private socket are trusted.
pub const SUPERUSER: &str = "ferrotune";

/// Why the cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `initdb`/`pg_ctl` were not found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH or under \
         /usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: `apt-get install postgresql`; \
         Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql`) or point \
         ferrotune at an existing server with DATABASE_URL=postgres://…"
    )]
    BinariesNotFound,
    /// Running as root, the cluster's unprivileged user cannot reach the cluster directory.
    #[error(
        "embedded PostgreSQL: running as root, the cluster in {root} must run as the unprivileged \
         user '{user}', which cannot enter {blocked} (mode {mode:04o}). Use a data dir that user \
         can reach (--data-dir under /var/lib or /tmp, or `chmod o+x {blocked}`), run ferrotune \
         as a non-root user, or point it at an existing server with DATABASE_URL=postgres://…"
    )]
    Unreachable {
        /// The cluster directory.
        root: String,
        /// The first directory above it that the user cannot enter.
        blocked: String,
        /// That directory's permission bits.
        mode: u32,
        /// The user the cluster runs as.
        user: String,
    },
    /// A step failed; the message includes the tool's output.
    #[error("embedded PostgreSQL: {0}")]
    Failed(String),
}

/// A running (or reusable) private cluster.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    root: PathBuf,
    bin: PathBuf,
    run_as: Option<User>,
    adopted: bool,
}

impl EmbeddedPostgres {
    /// Initialise the cluster in `root` if needed and start it unless it already runs.
    /// `fast` turns off fsync (for throwaway test clusters only).
    pub fn start(root: &Path, fast: bool) -> Result<Self, ClusterError> {
        let bin = find_binaries().ok_or(ClusterError::BinariesNotFound)?;
        let run_as = if Uid::effective().is_root() {
            let user = User::from_name("postgres")
                .ok()
                .flatten()
                .or_else(|| User::from_name("nobody").ok().flatten())
                .ok_or_else(|| {
                    fail("running as root and no unprivileged user to run PostgreSQL as")
                })?;
            Some(user)
        } else {
            None
        };
        let mut cluster = Self {
            root: absolute(root)?,
            bin,
            run_as,
            adopted: false,
        };
        cluster.prepare_dirs()?;
        let socket = cluster.socket_dir().join(".s.PGSQL.5432");
        if socket.as_os_str().len() > 100 {
            return Err(fail(&format!(
                "the socket path {} is too long for a Unix socket; use a shorter --data-dir",
                socket.display()
            )));
        }
        if !cluster.data_dir().join("PG_VERSION").exists() {
            cluster.initdb()?;
        }
        if cluster.is_running() {
            // Left running by an earlier run that did not stop it (killed): ours to stop too.
            tracing::info!(dir = %cluster.root.display(), "adopting a running embedded PostgreSQL");
            cluster.adopted = true;
        } else {
            cluster.pg_ctl_start(fast)?;
        }
        Ok(cluster)
    }

    /// The URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@localhost/{db}?host={}",
            self.socket_dir().display()
        )
    }

    /// Whether the cluster was already running when [`start`](Self::start) found it.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Stop the server.
    pub fn stop(&self) {
        let out = self.tool("pg_ctl", &["stop", "-m", "fast", "-w", "-D"], true);
        if let Err(e) = out {
            tracing::warn!(error = %e, "stopping embedded PostgreSQL failed");
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    fn prepare_dirs(&self) -> Result<(), ClusterError> {
        for dir in [&self.root, &self.socket_dir()] {
            std::fs::create_dir_all(dir)
                .map_err(|e| fail(&format!("creating {}: {e}", dir.display())))?;
        }
        if let Some(user) = &self.run_as {
            check_reachable(&self.root, user)?;
            chown_tree(&self.root, user)?;
            chown_tree(&self.socket_dir(), user)?;
        }
        Ok(())
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        tracing::info!(dir = %self.root.display(), "initialising embedded PostgreSQL cluster");
        let data = self.data_dir();
        let data = data.to_string_lossy();
        self.tool(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ],
            false,
        )
        .map(|_| ())
    }

    fn is_running(&self) -> bool {
        self.tool("pg_ctl", &["status", "-D"], true).is_ok()
    }

    fn pg_ctl_start(&self, fast: bool) -> Result<(), ClusterError> {
        let mut opts = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c unix_socket_permissions=0700 \
             -c max_connections=300",
            self.socket_dir().display()
        );
        if fast {
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let log = self.root.join("postgres.log");
        let log = log.to_string_lossy();
        tracing::info!(dir = %self.root.display(), "starting embedded PostgreSQL");
        self.tool(
            "pg_ctl",
            &["start", "-w", "-t", "60", "-l", &log, "-o", &opts, "-D"],
            true,
        )
        .map(|_| ())
    }

    /// Run a tool as the cluster's user; with `with_data` the data dir is appended.
    fn tool(&self, name: &str, args: &[&str], with_data: bool) -> Result<Output, ClusterError> {
        let mut cmd = Command::new(self.bin.join(name));
        cmd.args(args).current_dir(&self.root);
        if with_data {
            cmd.arg(self.data_dir());
        }
        if let Some(user) = &self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let out = cmd
            .output()
            .map_err(|e| fail(&format!("running {name}: {e}")))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(fail(&format!(
                "{name} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }
}

fn fail(message: &str) -> ClusterError {
    ClusterError::Failed(message.to_owned())
}

fn absolute(path: &Path) -> Result<PathBuf, ClusterError> {
    std::path::absolute(path).map_err(|e| fail(&format!("resolving {}: {e}", path.display())))
}

/// Refuse, with what to do instead, when `user` cannot enter every directory above `root`: the
/// cluster runs as that user and could not reach its own files (a root-owned 0700 parent, as
/// `mktemp -d` makes).
fn check_reachable(root: &Path, user: &User) -> Result<(), ClusterError> {
    use std::os::unix::fs::MetadataExt;
    for dir in root.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.mode();
        let enters = if meta.uid() == user.uid.as_raw() {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !enters {
            return Err(ClusterError::Unreachable {
                root: root.display().to_string(),
                blocked: dir.display().to_string(),
                mode: mode & 0o7777,
                user: user.name.clone(),
            });
        }
    }
    Ok(())
}

/// The directory holding `initdb` and `pg_ctl`: PATH first, then the newest Debian layout.
pub fn find_binaries() -> Option<PathBuf> {
    find_binaries_in(
        std::env::var_os("PATH").as_deref(),
        Path::new("/usr/lib/postgresql"),
    )
}

/// [`find_binaries`] with the search path and the Debian root given.
pub fn find_binaries_in(path_var: Option<&std::ffi::OsStr>, debian_root: &Path) -> Option<PathBuf> {
    let on_path = path_var
        .map(|p| std::env::split_paths(p).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(debian_root)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn chown_tree(path: &Path, user: &User) -> Result<(), ClusterError> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| fail(&format!("reading {}: {e}", path.display())))?;
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != user.uid.as_raw() {
        nix::unistd::chown(path, Some(user.uid), Some(user.gid))
            .map_err(|e| fail(&format!("handing {} to {}: {e}", path.display(), user.name)))?;
    }
    // A tree we handed over before stays owned by the user: only a new root needs the walk.
    if meta.is_dir() && meta.uid() != user.uid.as_raw() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| fail(&format!("listing {}: {e}", path.display())))?;
        for entry in entries.flatten() {
            chown_tree(&entry.path(), user)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_are_reported_with_how_to_install_them() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            find_binaries_in(Some(std::ffi::OsStr::new("")), empty.path()),
            None
        );
        let message = ClusterError::BinariesNotFound.to_string();
        assert!(message.contains("apt-get install postgresql"));
        assert!(message.contains("DATABASE_URL"));
    }

    #[test]
    fn binaries_are_found_under_the_newest_debian_version() {
        let root = tempfile::tempdir().unwrap();
        for v in ["13", "15"] {
            let bin = root.path().join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("initdb"), "").unwrap();
        }
        let found = find_binaries_in(None, root.path()).unwrap();
        assert!(found.ends_with("15/bin"));
    }
}
