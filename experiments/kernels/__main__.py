"""``python -m experiments.kernels build|status``: compile the oneDNN kernels
ahead of time (then ``--conv auto`` uses them), or say whether they are built."""

import argparse
import sys

import experiments.kernels.onednn as onednn


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.kernels", description=__doc__)
  p.add_argument("cmd", choices=("build", "status"))
  args = p.parse_args(argv)
  if args.cmd == "build":
    try:
      path = onednn.build()
    except onednn.OneDNNUnavailable as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    print(f"oneDNN kernels: {path}")
    return 0
  reason = onednn.unavailable_reason()
  print("oneDNN kernels: built and loadable" if not reason else f"oneDNN kernels: {reason}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
