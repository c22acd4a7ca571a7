"""Generated gRPC stubs (see proto/README.md); never edited by hand."""
