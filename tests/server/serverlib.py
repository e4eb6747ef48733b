"""serverlib.py - start and stop `tpllm serve` for the server tests: on 127.0.0.1, a free
port chosen by the server (--port 0), ended by the pid the test started (SIGTERM, then
SIGKILL after a bound), every wait bounded in time."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("TPLLM_BIN", os.path.join(ROOT, "build", "tpllm"))
MPIRUN = os.path.join(ROOT, "tests", "mpi", "mpirun.sh")


class Server:
    def __init__(self, model, np=1, args=(), timeout=120, env=None):
        self.log = tempfile.NamedTemporaryFile(prefix="tpllm-serve-", suffix=".log", delete=False)
        cmd = [BIN, "serve", "-m", model, "--port", "0", "--threads", "1", *args]
        if np > 1:
            cmd = [MPIRUN, "-np", str(np), *cmd]
        self.cmd = cmd
        e = dict(os.environ)
        e.update(env or {})
        # its own process group: SIGTERM reaches mpirun and every rank
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, env=e, start_new_session=True)
        self.port = None
        t0 = time.time()
        while time.time() - t0 < timeout:
            text = self.text()
            m = re.search(r"serving http://127\.0\.0\.1:(\d+).*pid (\d+)", text)
            if m:
                self.port = int(m.group(1))
                self.rank0 = int(m.group(2))  # under mpirun: rank 0's process, not mpirun's
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"tpllm serve exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.1)
        if self.port is None:
            self.stop()
            raise RuntimeError(f"tpllm serve did not start within {timeout} s:\n{self.text()}")
        self.base = f"http://127.0.0.1:{self.port}"

    def text(self):
        with open(self.log.name, "r", errors="replace") as f:
            return f.read()

    def stop(self, timeout=20):
        """SIGTERM to rank 0 (it releases the other ranks; mpirun then exits with their status);
        SIGKILL to the whole process group if it is not gone in time. Returns the exit status."""
        if self.proc.poll() is None:
            try:
                os.kill(getattr(self, "rank0", self.proc.pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                raise RuntimeError(f"tpllm serve did not stop within {timeout} s of SIGTERM:\n{self.text()[-2000:]}")
        return self.proc.returncode

    def get(self, path, headers=None, timeout=30):
        req = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def post(self, path, body, headers=None, timeout=120):
        data = body if isinstance(body, bytes) else body.encode()
        req = urllib.request.Request(self.base + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


def synth(path, *args):
    subprocess.run([BIN, "synth", *args, "-o", path], check=True, capture_output=True, timeout=120)
    return path


def generate(model, prompt, n, *args, np=1, timeout=300):
    """`tpllm generate`'s text and token ids."""
    cmd = [BIN, "generate", "-m", model, "-p", prompt, "-n", str(n), "--threads", "1", "--show-tokens", "-q", *args]
    if np > 1:
        cmd = [MPIRUN, "-np", str(np), *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr}")
    toks = re.search(r"^tokens:(.*)$", r.stderr, re.M)
    text = r.stdout[:-1] if r.stdout.endswith("\n") else r.stdout  # generate ends with a newline
    return text, [int(t) for t in toks.group(1).split()] if toks else []


class Checks:
    """Counts checks; a failed one is printed and makes the run fail."""

    def __init__(self):
        self.passed = self.failed = 0

    def ok(self, cond, what, detail=""):
        if cond:
            self.passed += 1
            print(f"ok: {what}")
        else:
            self.failed += 1
            print(f"FAIL: {what}{': ' + str(detail) if detail != '' else ''}")
        sys.stdout.flush()
        return cond

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        return 1 if self.failed else 0
