"""LCH pipelines: Ray Jobs, Ray Data and Ray Train around the core functions in `lch`."""

import os

# Both are read by Ray when it is imported, so they are set here, before any module of this
# package imports Ray. Token authentication for every Ray instance LCH starts or joins
# (lch.pipelines.runtime provides the token). A Ray instance started here advertises 127.0.0.1
# and binds its servers there, as Ray does on macOS and Windows; not when this process joins a
# cluster (RAY_ADDRESS), whose drivers and workers must reach each other.
os.environ.setdefault("RAY_AUTH_MODE", "token")
if not os.environ.get("RAY_ADDRESS"):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
