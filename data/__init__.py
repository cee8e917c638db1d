"""Course data: the synthetic story corpus, its build script and the sha256 manifest."""
