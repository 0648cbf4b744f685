"""The accelerator kit: offline wheelhouse, device check script and its report."""
