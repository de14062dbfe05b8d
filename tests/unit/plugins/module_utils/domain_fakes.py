"""What DomainManager uses of the module wrapper, for unit tests on libvirt's test driver."""

from __future__ import annotations

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.virtops.kvm.plugins.module_utils._client import COMMON_ARGUMENT_SPEC
from ansible_collections.virtops.kvm.plugins.modules.domain import ARGUMENT_SPEC


class FakeKvm:
    """What DomainManager uses of KvmModule, with a shared test:///default connection."""

    def __init__(self, conn, params, *, check_mode=False, diff_mode=True):
        spec = dict(COMMON_ARGUMENT_SPEC, **ARGUMENT_SPEC)
        params = dict({"uri": "test:///default", "memory_guard": False}, **params)
        result = ArgumentSpecValidator(spec).validate(params)
        assert not result.error_messages, result.error_messages
        self.params = result.validated_parameters
        self.conn = conn
        self.check_mode = check_mode
        self.diff_mode = diff_mode
        self.warnings = []

    def warn(self, msg):
        self.warnings.append(msg)
