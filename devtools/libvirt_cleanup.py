"""Removing the libvirt objects a test or a benchmark made.

The benchmarks must not import the test tree (nor the tests the benchmarks), and both remove
guests the same way: this leaf module imports nothing of either (libvirt only when called).
"""

from __future__ import annotations

from collections.abc import Iterable


def undefine_flags() -> int:
    """Undefine a guest with everything libvirt keeps beside its definition (managed save,
    snapshot and checkpoint metadata, NVRAM), as the domain module's ``state=absent`` does."""
    import libvirt  # noqa: PLC0415 - importing this module must not need libvirt

    return (
        libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    )


def remove_domain(dom) -> None:
    """Destroy ``dom`` if it runs and undefine it if it is persistent. Both steps are tried;
    the first ``libvirt.libvirtError`` is raised after them (callers choose to ignore it)."""
    import libvirt  # noqa: PLC0415

    errors: list[libvirt.libvirtError] = []
    try:
        persistent = dom.isPersistent()  # asked first: a transient guest is gone once destroyed
    except libvirt.libvirtError as exc:
        errors.append(exc)
        persistent = True
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as exc:
        errors.append(exc)
    try:
        if persistent:
            dom.undefineFlags(undefine_flags())
    except libvirt.libvirtError as exc:
        errors.append(exc)
    if errors:
        raise errors[0]


def remove_domain_named(conns: Iterable, name: str) -> None:
    """Remove guest ``name`` from whichever of ``conns`` has it, ignoring libvirt errors."""
    import libvirt  # noqa: PLC0415

    for conn in conns:
        try:
            remove_domain(conn.lookupByName(name))
        except libvirt.libvirtError:
            continue


def domains_with_prefix(conn, prefix: str) -> list:
    """The guests on ``conn`` whose names start with ``prefix``."""
    return [dom for dom in conn.listAllDomains(0) if dom.name().startswith(prefix)]


def remove_network(conn, name: str) -> None:
    """Stop and undefine network ``name`` if it exists."""
    import libvirt  # noqa: PLC0415

    try:
        net = conn.networkLookupByName(name)
    except libvirt.libvirtError:
        return
    persistent = net.isPersistent()
    if net.isActive():
        net.destroy()
    if persistent:
        net.undefine()


def remove_pool(conn, name: str) -> None:
    """Delete the volumes of pool ``name`` (if it runs), stop it and undefine it, if it exists."""
    import libvirt  # noqa: PLC0415

    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        return
    if pool.isActive():
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
        pool.destroy()
    if pool.isPersistent():
        pool.undefine()
