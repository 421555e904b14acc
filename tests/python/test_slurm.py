#!/usr/bin/python3
"""tools/slurm-sweep on a real single-node SLURM cluster, run by ctest:

    test_slurm.py --stsweep PATH --workdir DIR [--keep]

First, without SLURM: argument errors and an invalid sweep exit 2, --dry-run writes and
prints the batch scripts. Then (root, slurm-wlm and munge installed; else exit 77 with
the reason) it starts its own cluster in a temporary folder: munged with its own key and
socket, slurmctld and slurmd with a slurm.conf of its own on free ports (SLURM_CONF points
at it; no system-wide file is read or written). It submits a 24-trial sweep in 3 shards
with tools/slurm-sweep, interrupts two running shards the two ways a cluster does (USR1
to the batch shell, as --signal sends before the time limit, after which the script
requeues itself; and `scontrol requeue`, as a preemption does: SIGTERM to every process,
SLURM requeues), waits for the merge job, and checks that the merged file equals an
unsharded local run value for value on every column and that `stsweep info` says
complete. The daemons it started are always stopped (by their pids and pid files), and
so is anything left that carries its SLURM_CONF.
"""
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from stsweep_testlib import FAILURES, arguments, check, datasets, same_bits

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "slurm-sweep")

SWEEP = {
    "name": "slurm-e2e",
    "description": "tools/slurm-sweep end-to-end test: 24 trials, a few seconds per shard",
    "seed": 5,
    "defaults": {"d": 32, "k": 4, "m": 4, "hidden": [32], "n_train": 32, "steps": 40000,
                 "path": "data", "checkpoints": 8, "teacher": {"kind": "oracle"}},
    "grid": {"noise": [0.1, 0.5, 1.0], "lambda": [0, 1],
             "teacher.decomposition": ["balanced", "rotated"], "seed": {"range": [0, 2]}},
}
N_TRIALS = 24
SHARDS = 3

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.1f} s] {msg}", flush=True)


def sh(cmd, env=None, timeout=60, ok=(0,)):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode not in ok:
        print(f"command {cmd} -> {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}", flush=True)
    return p


def find(name):
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin")


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("0.0.0.0", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent():
    """preexec_fn: the daemon gets SIGTERM if this test dies (e.g. killed by a ctest timeout)."""
    _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setsid()


def clean_env(conf=None):
    """This process's environment without SLURM variables (the test may run inside a job)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SINFO_", "SCONTROL_"))}
    if conf:
        env["SLURM_CONF"] = conf
    return env


# --- without a cluster ---------------------------------------------------------------------

def read_text(path):
    with open(path) as f:
        return f.read()


def offline_checks(stsweep, wd, sweep):
    def tool(args):
        return subprocess.run(["bash", TOOL] + args, capture_output=True, text=True, timeout=120)

    base = [sweep, os.path.join(wd, "dry"), "--stsweep", stsweep]
    for extra, what in [([], "no --shards"), (["--shards", "0"], "--shards 0"), (["--shards", "x"], "--shards x"),
                        (["--shards", "3", "--time", "1:2:3:4"], "a bad --time"),
                        (["--shards", "3", "--cpus-per-task", "0"], "--cpus-per-task 0"),
                        (["--shards", "3", "--bogus"], "an unknown option"),
                        (["--shards", str(N_TRIALS + 1)], "more shards than trials")]:
        p = tool(base + extra + ["--dry-run"])
        check(p.returncode == 2 and "slurm-sweep:" in p.stderr, f"slurm-sweep: {what}: exit 2 with a message")
    p = tool([sweep, os.path.join(wd, "dry"), "--shards", "3", "--stsweep", "/nonexistent/stsweep", "--dry-run"])
    check(p.returncode == 2 and "/nonexistent/stsweep" in p.stderr, "slurm-sweep: a missing --stsweep: exit 2")
    p = tool([os.path.join(wd, "no-such.json"), os.path.join(wd, "dry"), "--shards", "3", "--stsweep", stsweep])
    check(p.returncode == 2 and "no-such.json" in p.stderr, "slurm-sweep: a missing sweep file: exit 2")
    bad = os.path.join(wd, "bad.json")
    with open(bad, "w") as f:
        json.dump(dict(SWEEP, grid={"noise": [0.1, -1]}), f)
    p = tool([bad, os.path.join(wd, "badout"), "--shards", "2", "--stsweep", stsweep])
    check(p.returncode == 2 and "grid.noise[1]" in p.stderr and not os.path.exists(os.path.join(wd, "badout")),
          "slurm-sweep: an invalid sweep: exit 2 with stsweep's message, nothing written")

    p = tool(base + ["--shards", "3", "--time", "00:10:00", "--cpus-per-task", "2", "--partition", "short",
                     "--run-arg=--batch-size=4", "--dry-run", "--", "--account=lab", "--qos=low"])
    dry = os.path.join(wd, "dry", "slurm")
    ok = p.returncode == 0
    for s in ["#SBATCH --array=0-2", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120", "#SBATCH --time=00:10:00",
              "#SBATCH --cpus-per-task=2", "#SBATCH --partition=short", "--shard \"$I/$N\" --resume",
              "--progress jsonl --batch-size=4", "shard-%a-of-3.log", "merge \"$tmp\"",
              "--account=lab --qos=low --dependency=afterok:<array id>"]:
        if s not in p.stdout:
            ok = False
            print(f"  dry run lacks: {s}")
    check(ok, "slurm-sweep --dry-run prints both scripts and the sbatch commands")
    snaps = sorted(x for x in os.listdir(dry) if x.startswith("sweep-") and x.endswith(".json"))
    check(all(os.path.exists(os.path.join(dry, x)) for x in ["shards.sbatch", "merge.sbatch", "submit.sh"])
          and len(snaps) == 1 and not any(x.endswith(".h5") for x in os.listdir(os.path.join(wd, "dry"))),
          "--dry-run writes the scripts and the sweep's copy to OUTDIR/slurm/ and runs nothing")
    # An edited sweep submitted (here: a dry run) into the same OUTDIR while the first
    # submission's jobs wait: its own copy; the first copy, which those jobs read when they
    # start, is left as it was (until session 12 one sweep.json was overwritten).
    first = read_text(os.path.join(dry, snaps[0]))
    edited = os.path.join(wd, "edited.json")
    with open(edited, "w") as f:
        json.dump(dict(SWEEP, grid=dict(SWEEP["grid"], noise=[2, 3])), f)
    p = tool([edited, os.path.join(wd, "dry"), "--shards", "2", "--stsweep", stsweep, "--dry-run"])
    snaps2 = sorted(x for x in os.listdir(dry) if x.startswith("sweep-") and x.endswith(".json"))
    new = [x for x in snaps2 if x not in snaps]
    check(p.returncode == 0 and len(snaps2) == 2 and read_text(os.path.join(dry, snaps[0])) == first and new
          and new[0] in read_text(os.path.join(dry, "shards.sbatch")),
          "an edited sweep gets its own copy; the queued jobs' copy is unchanged")
    for args, what in [([os.path.join(wd, "ha#sh")], "an OUTDIR with '#' (sbatch: a comment)"),
                       ([os.path.join(wd, "dry"), "--run-arg=--threads=2"], "--run-arg repeating --threads"),
                       ([os.path.join(wd, "dry"), "--run-arg", "--backend"], "--run-arg repeating --backend")]:
        p = tool([sweep] + args[:1] + ["--shards", "2", "--stsweep", stsweep, "--dry-run"] + args[1:])
        check(p.returncode == 2 and "slurm-sweep:" in p.stderr, f"slurm-sweep: {what}: exit 2 with a message")
    check(sh(["bash", "-n", os.path.join(dry, "shards.sbatch")]).returncode == 0
          and sh(["bash", "-n", os.path.join(dry, "merge.sbatch")]).returncode == 0, "generated scripts parse (bash -n)")
    shards_script = read_text(os.path.join(dry, "shards.sbatch"))
    check("--devices" not in shards_script and "--backend cpu" in shards_script,
          "no --gpus: tasks run --backend cpu, no --devices")
    # No extra sbatch args: the printed commands have no empty argument ('') and run as pasted.
    p = tool(base + ["--shards", "2", "--dry-run"])
    cmds = [ln for ln in p.stdout.splitlines() if ln.startswith("sbatch --parsable")]
    check(p.returncode == 0 and len(cmds) == 2 and not any("''" in c for c in cmds)
          and cmds[0] == "sbatch --parsable " + os.path.join(dry, "shards.sbatch")
          and cmds[1] == "sbatch --parsable --dependency=afterok:<array id> " + os.path.join(dry, "merge.sbatch"),
          f"--dry-run without sbatch args prints the sbatch commands without '' ({cmds})")
    p = tool(base + ["--shards", "2", "--max-requeues", "0", "--dry-run"])
    check(p.returncode == 0 and "#SBATCH --requeue" in p.stdout and "--signal=B:USR1" not in p.stdout,
          "--max-requeues 0: no early USR1 (the task runs to its limit; SIGTERM there checkpoints)")
    for g, want in [("1", "--backend cuda --progress"), ("2", "--backend cuda --devices all --progress")]:
        p = tool(base + ["--shards", "2", "--gpus", g, "--dry-run"])
        check(p.returncode == 0 and f"#SBATCH --gpus={g}" in p.stdout and want in p.stdout,
              f"--gpus {g}: the tasks run '{want.replace(' --progress', '')}'")


# --- the cluster ---------------------------------------------------------------------------

class Cluster:
    def __init__(self, bins, tmp):
        self.bins, self.tmp = bins, tmp
        self.procs = {}  # name -> Popen
        self.conf = os.path.join(tmp, "slurm.conf")
        self.env = clean_env(self.conf)

    def write_conf(self):
        host = socket.gethostname().split(".")[0]
        ctld_port, d_port = free_ports(2)
        cpus = len(os.sched_getaffinity(0))
        t = self.tmp
        conf = f"""# written by tests/python/test_slurm.py; everything under {t}
ClusterName=ststest{os.getpid()}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long before it starts again (default 120 s)
AuthInfo=socket={t}/munge.sock,cred_expire=5
StateSaveLocation={t}/state
SlurmdSpoolDir={t}/spool
SlurmctldPidFile={t}/slurmctld.pid
SlurmdPidFile={t}/slurmd.pid
SlurmctldLogFile={t}/slurmctld.log
SlurmdLogFile={t}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerParameters=sched_interval=1,bf_interval=1
KillWait=10
NodeName={host} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        with open(self.conf, "w") as f:
            f.write(conf)
        return ctld_port, d_port

    def start_daemon(self, name, cmd):
        out = open(os.path.join(self.tmp, f"{name}.stderr"), "w")
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            preexec_fn=die_with_parent, cwd=self.tmp)
        out.close()

    def start(self):
        t = self.tmp
        os.chmod(t, 0o755)  # munged wants every folder above its socket searchable by all
        for d in ("key", "state", "spool"):
            os.makedirs(os.path.join(t, d), mode=0o700)
        key = os.path.join(t, "key", "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o600)
        ports = self.write_conf()
        log(f"cluster in {t}: SlurmctldPort {ports[0]}, SlurmdPort {ports[1]}")
        self.start_daemon("munged", [self.bins["munged"], "-F", f"--key-file={key}", f"--socket={t}/munge.sock",
                                     f"--pid-file={t}/munged.pid", f"--log-file={t}/munged.log",
                                     f"--seed-file={t}/key/munged.seed"])
        if not self.wait_for(lambda: os.path.exists(f"{t}/munge.sock"), 10, "munged"):
            return False
        self.start_daemon("slurmctld", [self.bins["slurmctld"], "-D", "-c", "-f", self.conf])
        self.start_daemon("slurmd", [self.bins["slurmd"], "-D", "-c", "-f", self.conf])

        def idle():
            p = subprocess.run([self.bins["sinfo"], "-h", "-o", "%T"], capture_output=True, text=True,
                               env=self.env, timeout=15)
            return p.returncode == 0 and p.stdout.strip() == "idle"
        return self.wait_for(idle, 40, "the node to be idle (sinfo)")

    def wait_for(self, cond, timeout, what):
        end = time.time() + timeout
        while time.time() < end:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    print(f"{name} exited with {p.returncode} while waiting for {what}")
                    return False
            if cond():
                return True
            time.sleep(0.25)
        print(f"timed out after {timeout} s waiting for {what}")
        return False

    def cmd(self, name, *args, timeout=30, ok=(0,)):
        return sh([self.bins[name]] + list(args), env=self.env, timeout=timeout, ok=ok)

    def show_logs(self, lines=25):
        for f in ["munged.stderr", "slurmctld.log", "slurmd.log", "slurmctld.stderr", "slurmd.stderr"]:
            path = os.path.join(self.tmp, f)
            if os.path.exists(path):
                with open(path, errors="replace") as fh:
                    tail = fh.readlines()[-lines:]
                print(f"--- {f} (last {len(tail)} lines)\n" + "".join(tail), end="")

    def ours(self):
        """Pids of processes that carry this cluster's SLURM_CONF (slurmstepd, job scripts, stsweep)."""
        mark = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if mark in f.read().split(b"\0"):
                        pids.append(int(d))
            except OSError:
                pass
        return pids

    def stop(self):
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run([self.bins["scancel"], "--full", "--user", "root"], env=self.env,
                           capture_output=True, timeout=30)
            end = time.time() + 10
            while time.time() < end:
                p = subprocess.run([self.bins["squeue"], "-h"], capture_output=True, text=True, env=self.env,
                                   timeout=15)
                if p.returncode != 0 or not p.stdout.strip():
                    break
                time.sleep(0.5)
        # Daemons in reverse order of start: by the Popen pid and by the pid file (the same process).
        for name in ["slurmd", "slurmctld", "munged"]:
            pids = set()
            if name in self.procs and self.procs[name].poll() is None:
                pids.add(self.procs[name].pid)
            pidfile = os.path.join(self.tmp, f"{name}.pid")
            try:
                with open(pidfile) as f:
                    pid = int(f.read().split()[0])
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if name.encode() in f.read():
                        pids.add(pid)
            except (OSError, ValueError, IndexError):
                pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            end = time.time() + 10
            while time.time() < end and any(alive(p) for p in pids):
                time.sleep(0.1)
            for pid in pids:
                if alive(pid):
                    print(f"  {name} ({pid}) ignored SIGTERM: SIGKILL")
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if name in self.procs:
                try:
                    self.procs[name].wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        for pid in self.ours():
            print(f"  stopping leftover process {pid}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def job_states(cluster, job):
    """{'<array>_<task>' or '<id>': state} from scontrol (jobs stay there MinJobAge = 300 s)."""
    p = cluster.cmd("scontrol", "-o", "show", "job", str(job), ok=(0, 1))
    out = {}
    for line in p.stdout.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        key = f"{f['ArrayJobId']}_{f['ArrayTaskId']}" if "ArrayTaskId" in f else f.get("JobId")
        out[key] = f.get("JobState", "?")
    return out


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def alive(pid):
    return os.path.exists(f"/proc/{pid}") and not zombie(pid)


def clean_stale():
    """Leftovers of an earlier run of this test that was killed (e.g. a slurmstepd still trying to
    report to its dead slurmd): processes whose SLURM_CONF is in a /tmp/stsweep-slurm-* folder whose
    owner (the test that made it, owner.pid) is gone, and those folders."""
    def owner_alive(d):
        try:
            with open(os.path.join(d, "owner.pid")) as f:
                return alive(int(f.read().strip()))
        except (OSError, ValueError):
            return False
    pat = re.compile(rb"^SLURM_CONF=(/tmp/stsweep-slurm-[A-Za-z0-9_]+)/slurm\.conf$")
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        for e in env:
            m = pat.match(e)
            if m and not owner_alive(m.group(1).decode()):
                print(f"  stopping process {d} left by an earlier, killed run ({m.group(1).decode()})")
                try:
                    os.kill(int(d), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    for d in os.listdir("/tmp"):
        full = os.path.join("/tmp", d)
        if d.startswith("stsweep-slurm-") and os.path.isdir(full) and not owner_alive(full) \
                and time.time() - os.path.getmtime(full) > 60:
            shutil.rmtree(full, ignore_errors=True)


def wait_merge(cluster, array, merge, timeout=120):
    """Polls the array and merge jobs until the merge job ends (bounded); returns its state."""
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
             "DEADLINE", "PREEMPTED"}
    last = None
    end = time.time() + timeout
    state = "?"
    while time.time() < end:
        states = job_states(cluster, array)
        states.update(job_states(cluster, merge))
        state = states.get(merge, "?")
        if states != last:
            log("  " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
            last = states
        if state in final:
            break
        time.sleep(0.5)
    return state


# --- main ----------------------------------------------------------------------------------

def main():
    a = arguments(lambda ap: ap.add_argument("--keep", action="store_true",
                                             help="keep the cluster's temporary folder"))
    stsweep = os.path.abspath(a.stsweep)
    wd = os.path.abspath(a.workdir)
    sweep = os.path.join(wd, "sweep.json")
    with open(sweep, "w") as f:
        json.dump(SWEEP, f, indent=1)

    offline_checks(stsweep, wd, sweep)

    # --- can this machine run a cluster? ---
    names = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel"]
    bins = {n: find(n) for n in names}
    missing = [n for n in names if not bins[n]]
    reason = None
    if missing:
        reason = f"not installed: {', '.join(missing)} (tools/install-deps --test installs slurm-wlm and munge)"
    elif os.geteuid() != 0:
        reason = "needs root: slurmd runs jobs as their user and this test starts it as root"
    else:
        try:
            import h5py  # noqa: F401
            import numpy  # noqa: F401
        except ImportError as e:
            reason = f"{e} (use Debian's /usr/bin/python3)"
    if reason:
        print(f"skip: {reason}")
        return 1 if FAILURES else 77

    # --- an unsharded local run: the reference ---
    ref = os.path.join(wd, "ref.h5")
    ref_proc = subprocess.Popen([stsweep, "run", sweep, "-o", ref, "--backend", "cpu", "--progress", "none"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    clean_stale()
    tmp = tempfile.mkdtemp(prefix="stsweep-slurm-", dir="/tmp")
    with open(os.path.join(tmp, "owner.pid"), "w") as f:
        f.write(f"{os.getpid()}\n")
    cluster = Cluster(bins, tmp)
    try:
        up = cluster.start()
        ref_out = ref_proc.communicate(timeout=120)[0]
        check(ref_proc.returncode == 0, "unsharded local run")
        if not check(up, "single-node cluster up (munged, slurmctld, slurmd; node idle)"):
            cluster.show_logs()
            return 1
        log("cluster up")

        out = os.path.join(wd, "out")
        p = sh(["bash", TOOL, sweep, out, "--shards", str(SHARDS), "--stsweep", stsweep, "--time", "00:10:00",
                "--cpus-per-task", "1", "--run-arg=--batch-size=2"], env=cluster.env, timeout=60)
        print(p.stdout, end="")
        m_a = re.search(r"^array job: (\d+)$", p.stdout, re.M)
        m_m = re.search(r"^merge job: (\d+)$", p.stdout, re.M)
        if not check(p.returncode == 0 and m_a and m_m, "slurm-sweep submits and prints both job ids"):
            print(p.stderr)
            return 1
        array, merge = m_a.group(1), m_m.group(1)
        check(f"squeue -j {array},{merge}" in p.stdout, "slurm-sweep prints how to watch the jobs")
        log(f"submitted: array {array}, merge {merge}")

        # --- interrupt two running shards, the two ways a cluster does ---
        def running(task):
            return job_states(cluster, array).get(f"{array}_{task}") == "RUNNING"
        interrupted = {}
        if cluster.wait_for(lambda: running(0) and running(1), 30, "shards 0 and 1 to run"):
            time.sleep(1.2)  # a few batches finish first
            if running(0):
                cluster.cmd("scancel", "--signal=USR1", "--batch", f"{array}_0")
                interrupted[0] = "USR1 (as before the time limit)"
            if running(1):
                cluster.cmd("scontrol", "requeue", f"{array}_1")
                interrupted[1] = "scontrol requeue (as a preemption)"
            log(f"interrupted: {interrupted or 'none (the shards finished first)'}")
        else:
            print(f"  states: {job_states(cluster, array)}")

        # --- wait for the merge job ---
        state = wait_merge(cluster, array, merge)
        log(f"merge job {merge}: {state}")
        logs = os.path.join(out, "logs")
        if not check(state == "COMPLETED", f"the merge job completed (state {state})"):
            for f in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
                print(f"--- {f}\n{read(os.path.join(logs, f))}")
            cluster.show_logs()
            return 1
        tasks = job_states(cluster, array)
        check(sorted(tasks) == [f"{array}_{i}" for i in range(SHARDS)]
              and all(v == "COMPLETED" for v in tasks.values()), f"every array task completed: {tasks}")

        # --- what the interrupted shards did ---
        for i, how in interrupted.items():
            text = read(os.path.join(logs, f"shard-{i}-of-{SHARDS}.log"))
            starts = text.count(f"shard {i}/{SHARDS} ->")
            if "stsweep exited with 0" in text.split("restart 1")[0] and starts == 1:
                print(f"  shard {i} finished before the {how} landed")
                continue
            check(starts >= 2 and "restart 1" in text and "interrupted by SIGTERM" in text,
                  f"shard {i}, {how}: stsweep checkpointed on SIGTERM, the task was requeued and resumed")
            m = re.findall(r"(\d+) of (\d+) trials to run", text)
            if len(m) >= 2:
                print(f"  shard {i}: first session {m[0][0]} of {m[0][1]} to run, after the requeue {m[-1][0]}")
        if 0 in interrupted:
            check("time limit near" in read(os.path.join(logs, f"shard-0-of-{SHARDS}.log"))
                  and "requeueing" in read(os.path.join(logs, f"shard-0-of-{SHARDS}.log")),
                  "USR1: the batch script stopped stsweep and requeued its own task")

        # --- the merged file against the unsharded run ---
        merged = os.path.join(out, f"{SWEEP['name']}.h5")
        check(os.path.exists(merged) and not os.path.exists(os.path.join(out, f"{SWEEP['name']}.merging.h5")),
              "merged file OUTDIR/<sweep name>.h5, no temporary left")
        check(all(os.path.exists(os.path.join(out, f"shard-{i}-of-{SHARDS}.h5")) for i in range(SHARDS))
              and all(os.path.exists(os.path.join(logs, f"shard-{i}-of-{SHARDS}.log")) for i in range(SHARDS))
              and os.path.exists(os.path.join(logs, "merge.log")), "shard files and logs in OUTDIR")
        check('"event":"finished"' in read(os.path.join(logs, f"shard-2-of-{SHARDS}.log")),
              "the logs hold --progress jsonl events")
        if os.path.exists(merged) and ref_proc.returncode == 0:
            got, exp = datasets(merged), datasets(ref)
            check(sorted(got) == sorted(exp), "merged vs unsharded: same columns")
            bad = [k for k in exp if k in got and not same_bits(got[k], exp[k])]
            check(not bad, f"merged vs unsharded: all {len(exp)} columns equal value for value"
                  + (f" (differ: {bad})" if bad else ""))
            info = sh([stsweep, "info", merged])
            check(info.returncode == 0 and "[complete]" in info.stdout and f"{N_TRIALS} done" in info.stdout,
                  "stsweep info: the merged file is complete")
            print(info.stdout, end="")

            # --- resubmission with OUTDIR/slurm/submit.sh: shards have nothing to do, the merge is redone ---
            before = os.stat(merged).st_mtime_ns
            p = sh(["bash", os.path.join(out, "slurm", "submit.sh")], env=cluster.env, timeout=60)
            m = re.search(r"array job (\d+), merge job (\d+)", p.stdout)
            if check(p.returncode == 0 and m, "OUTDIR/slurm/submit.sh resubmits both jobs"):
                state = wait_merge(cluster, m.group(1), m.group(2))
                check(state == "COMPLETED" and os.stat(merged).st_mtime_ns != before
                      and "nothing to do" in read(os.path.join(logs, f"shard-2-of-{SHARDS}.log")),
                      f"resubmitted: the shards had nothing to do, the merge ran again ({state})")
                got = datasets(merged)
                check(all(same_bits(got[k], exp[k]) for k in exp if k in got) and sorted(got) == sorted(exp),
                      "the merge redone equals the unsharded run")
        else:
            print(ref_out)
    finally:
        cluster.stop()
        left = [n for n in ("munged", "slurmctld", "slurmd") if n in cluster.procs and cluster.procs[n].poll() is None]
        left += [str(p) for p in cluster.ours()]
        check(not left, "every daemon and job process this test started has stopped" + (f": {left}" if left else ""))
        if ref_proc.poll() is None:
            ref_proc.kill()
        logs_copy = os.path.join(wd, "cluster")
        shutil.copytree(tmp, logs_copy, ignore=shutil.ignore_patterns("key", "*.sock*", "spool", "state"),
                        dirs_exist_ok=True)
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"done; cluster logs copied to {logs_copy}")

    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
