"""Drives upstream's qrexec policy engine (QubesOS/qubes-core-qrexec,
extracted beside the repo and named by QUBES_CORE_QREXEC_SRC) for the
policy benchmark, so both engines are measured in one run on the same
files. Nothing of upstream is copied here: this imports it.

  policy_engine.py inproc POLICY_DIR SYSTEM_INFO.json REQUESTS.jsonl ROUNDS
      loads the policy ROUNDS times and evaluates every request; prints one
      JSON object: parse times (s), eval seconds per request, and the
      result of each request (allow/ask/deny), for comparing answers.
  policy_engine.py exec POLICY_DIR SYSTEM_INFO.json SOURCE TARGET SERVICE
      what `qrexec-policy-exec --just-evaluate` does in a new process, with
      the system info read from the file instead of asked from qubesd.
"""
import asyncio
import json
import logging
import pathlib
import sys
import time

sys.path.insert(0, __import__("os").environ["QUBES_CORE_QREXEC_SRC"])

from qrexec import exc  # noqa: E402
from qrexec.policy import parser  # noqa: E402


def load_system(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def inproc(policy_dir, system_path, requests_path, rounds):
    system = load_system(system_path)
    parse = []
    policy = None
    for _ in range(rounds):
        t = time.perf_counter()
        policy = parser.FilePolicy(policy_path=[pathlib.Path(policy_dir)])
        parse.append(time.perf_counter() - t)
    with open(requests_path, encoding="utf-8") as f:
        reqs = [json.loads(line) for line in f if line.strip()]
    results = []
    t = time.perf_counter()
    for r in reqs:
        service, _, arg = r["service"].partition("+")
        try:
            request = parser.Request(
                service, "+" + arg, r["source"], r["target"], system_info=system
            )
            res = policy.evaluate(request)
            results.append("ask" if isinstance(res, parser.AskResolution) else "allow")
        except exc.AccessDenied:
            results.append("deny")
    per = (time.perf_counter() - t) / max(len(reqs), 1)
    print(json.dumps({"parse": parse, "eval": per, "results": results}))


def exec_mode(policy_dir, system_path, source, target, service):
    from qrexec import utils
    from qrexec.tools import qrexec_policy_exec as tool

    utils.get_system_info = lambda: load_system(system_path)
    tool.argparser.set_defaults(path=[pathlib.Path(policy_dir)])
    logging.getLogger("policy").addHandler(logging.NullHandler())
    return tool.main(["--just-evaluate", source, target, service])


if __name__ == "__main__":
    if sys.argv[1] == "inproc":
        inproc(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit(exec_mode(*sys.argv[2:7]))
