"""Fixtures shared by the harness tests."""

import pytest


@pytest.fixture(scope="module")
def onednn():
  """The oneDNN kernels module, built once (cached), or a skip saying why it cannot be."""
  from experiments.kernels import onednn as onednn_conv

  try:
    onednn_conv.require()
  except onednn_conv.OneDNNUnavailable as e:
    pytest.skip(str(e))
  return onednn_conv
