"""Session data through a real hub: an input's pull + verify + expose, and outputs' pack +
hash + upload, against ``hashlib.sha3_256`` over the same bytes in the same run.

Run: ``python tests/bench/bench_io.py [--mib 512] [--runs 3]``. Prints one JSON line per
figure (MB/s, and the ratio to hashing alone; goal of issue 11: ≥ 0.8).

- baseline: ``hashlib.sha3_256`` over the file, read in 1 MiB pieces (page cache warm);
  and, since the hub must keep what it acknowledged, a durable write of the same bytes
  (written and fsynced to a new file): the output path can be no faster than the slower
  of the two, so its ratio is given to that as well.
- input: ``GET /v1/blobs/{hash}`` from the hub streamed into the agent's image cache
  (``ImageCache.ensure``: hashed while written), then exposed the way the agent does for
  a placement (``PlacementData.prepare``: a hard link, read-only). The agent's own route
  differs only in who may call it (the admin here: no Placement needed).
- output: the agent's ``PlacementData.outputs_stream`` (a reproducible tar of the
  outputs folder, packed while it is sent) uploaded to the hub, which hashes it as it
  arrives, stores it and fsyncs it (``POST /v1/blobs``: the same receiving code as the
  agent's ``PUT /v1/placements/{name}/outputs``).

All traffic goes to a hub this script starts on 127.0.0.1; it stops it at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.data import PlacementData  # noqa: E402
from agent.images import ImageCache  # noqa: E402
from controller.client import Client  # noqa: E402
from specs.kinds import Workload  # noqa: E402
from tests.helpers import start_hub_subprocess  # noqa: E402

MIB = 1 << 20


def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
    line = {"bench": "io", "figure": figure, "value": round(value, 3), "unit": unit, **extra}
    print(json.dumps(line), flush=True)


def sha3_file(path: Path) -> str:
    h = hashlib.sha3_256()
    buf = bytearray(MIB)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            h.update(view[:n])
    return h.hexdigest()


def chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            yield chunk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    size = args.mib * MIB
    with tempfile.TemporaryDirectory(prefix="gu-bench-io-", dir=os.environ.get("TMPDIR")) as t:
        tmp = Path(t)
        proc, _url, config = start_hub_subprocess(tmp, log=True)
        try:
            client = Client.from_config(config)
            data = tmp / "data.bin"
            with open(data, "wb") as f:
                for _ in range(args.mib):
                    f.write(os.urandom(MIB))
            sha3_file(data)  # warm the page cache: every run reads from memory
            base, disk, inputs, outputs = [], [], [], []
            blob = client.call("POST", "/v1/blobs", content=chunks(data), timeout=None)["hash"]
            for run in range(args.runs):
                t0 = time.perf_counter()
                sha3_file(data)
                base.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                with open(tmp / "durable.bin", "wb") as f:
                    for chunk in chunks(data):
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                disk.append(time.perf_counter() - t0)
                (tmp / "durable.bin").unlink()

                cache = ImageCache(tmp / f"cache-{run}")
                data_dir = PlacementData(tmp / f"agent-data-{run}")
                workload = Workload.model_validate(
                    {"runtime": "native", "image": {"hash": blob},
                     "inputs": [{"hash": blob, "path": "in/data.bin"}],
                     "outputs": {"path": "out", "maxMiB": args.mib * 2}}
                )  # fmt: skip

                def fetch(h: str) -> Iterator[bytes]:
                    headers = {"Authorization": f"Bearer {client.token()}"}
                    with client.http.stream(
                        "GET", f"/v1/blobs/{h}", headers=headers, timeout=None
                    ) as resp:
                        resp.raise_for_status()
                        yield from resp.iter_bytes()

                os.sync()
                t0 = time.perf_counter()
                path = cache.ensure(blob, fetch)
                data_dir.prepare("p", workload, {blob: path})
                inputs.append(time.perf_counter() - t0)

                out = data_dir.outputs("p")
                shutil.copyfile(data, out / "result.bin")  # what a workload would leave
                # ...and different each run: the same bytes again would have the hub re-hash
                # its stored copy (an upload repairs a damaged one), which no run should time
                (out / "run.txt").write_text(str(run))
                os.sync()  # (written back before the clock starts: the workload wrote it earlier)
                t0 = time.perf_counter()
                _files, body = data_dir.outputs_stream("p")
                answer = client.upload("POST", "/v1/blobs", body, timeout=None)
                outputs.append(time.perf_counter() - t0)
                assert answer["size"] > size
                data_dir.remove("p")
                shutil.rmtree(tmp / f"cache-{run}")
                client.call("GET", "/v1/blobs")  # (the hub is still answering)
            mb = size / 1e6
            b = statistics.median(base)
            w = statistics.median(disk)
            emit("sha3_baseline", mb / b, "MB/s", mib=args.mib, runs=args.runs)
            emit("durable_write_baseline", mb / w, "MB/s", mib=args.mib, runs=args.runs)
            for figure, times in (("input_pull_verify_expose", inputs),
                                  ("output_pack_hash_upload", outputs)):  # fmt: skip
                m = statistics.median(times)
                emit(figure, mb / m, "MB/s", ratio_to_sha3=round(b / m, 3),
                     ratio_to_slower_baseline=round(max(b, w) / m, 3), mib=args.mib,
                     runs=args.runs, seconds_p50=round(m, 3), goal_ratio=0.8)  # fmt: skip
        except BaseException:
            print((tmp / "hub.log").read_text()[-3000:], file=sys.stderr)  # why, if the hub died
            raise
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
