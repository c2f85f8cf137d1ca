//! A worker's id, `worker-{device}-{node}-{pid}-{random}`: the lease holder written on every job
//! it claims. It advertises the device (leases and `ferrotune:worker_leases` show it), and names
//! the node and the process, so a worker starting on a node can tell which leases were held by
//! processes of that node that are gone (killed, crashed) and release them at once instead of
//! waiting the leases out. The claim's attempt number fences the dead holder off either way.

use crate::domain::hyperparameters::WorkerDevice;
use crate::domain::ids::JobId;

/// A fresh id for a worker of this process on `device`.
pub fn new_worker_id(device: WorkerDevice) -> String {
    format!(
        "worker-{}-{}-{}-{}",
        device.as_str(),
        node_name(),
        std::process::id(),
        JobId::generate().body()
    )
}

/// This machine's host name (a container's own, in a container), `-` kept: ids are parsed from
/// both ends.
pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The node and process id named by a worker id, when it has them.
pub fn holder_of(id: &str) -> Option<(&str, u32)> {
    let rest = id.strip_prefix("worker-")?;
    let (_device, rest) = rest.split_once('-')?;
    let mut tail = rest.rsplitn(3, '-');
    let _random = tail.next()?;
    let pid = tail.next()?.parse().ok()?;
    let node = tail.next()?;
    Some((node, pid))
}

/// Of the lease holders `ids`, those that were processes of this node that no longer run (never
/// this process's own workers).
pub fn dead_on_this_node(ids: &[String], alive: impl Fn(u32) -> bool) -> Vec<&str> {
    let node = node_name();
    let me = std::process::id();
    ids.iter()
        .map(String::as_str)
        .filter(|id| holder_of(id).is_some_and(|(n, pid)| n == node && pid != me && !alive(pid)))
        .collect()
}

/// Whether process `pid` exists on this machine (one of another user's counts).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_node_and_process_even_with_dashes_in_the_host() {
        let id = new_worker_id(WorkerDevice::Cuda);
        assert!(id.starts_with("worker-cuda-"), "{id}");
        assert_eq!(
            holder_of(&id),
            Some((node_name().as_str(), std::process::id()))
        );
        assert_eq!(
            holder_of("worker-cpu-gpu-box-7-4242-abc"),
            Some(("gpu-box-7", 4242))
        );
        assert_eq!(holder_of("worker-cpu-4242-abc"), None);
        assert_eq!(holder_of("someone-else"), None);
    }

    #[test]
    fn only_gone_processes_of_this_node_are_dead() {
        let node = node_name();
        let me = std::process::id();
        let ids = vec![
            format!("worker-cpu-{node}-111-a"),
            format!("worker-cpu-{node}-222-b"),
            format!("worker-cpu-{node}-{me}-c"),
            "worker-cpu-elsewhere-111-d".to_owned(),
            "worker-cpu-333-e".to_owned(),
        ];
        let dead = dead_on_this_node(&ids, |pid| pid == 222);
        assert_eq!(dead, [ids[0].as_str()]);
        assert!(process_alive(me));
    }
}
