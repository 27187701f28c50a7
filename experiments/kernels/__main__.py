"""``python -m experiments.kernels build|status|options``: compile the oneDNN
kernels ahead of time (then ``--step auto`` uses them), say whether they are
built, or list the options of ``--step kernels:OPTION=VALUE,...``."""

import argparse
import sys

import experiments.kernels.onednn as onednn


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.kernels", description=__doc__)
  p.add_argument("cmd", choices=("build", "status", "options"))
  args = p.parse_args(argv)
  if args.cmd == "options":
    from experiments.kernels import step_option_choices

    for k, values in step_option_choices().items():
      print(f"{k}: {' | '.join(values)}")
    return 0
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
