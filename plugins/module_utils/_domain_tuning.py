# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The domain's tuning fields: CPU pinning and scheduling, NUMA, memory backing and limits,
block I/O weight, cache allocation.

Readers and writers keep libvirt's element order inside ``<cputune>`` and drop the container
when it is left empty; the settings a running guest can take have live appliers (pinning,
scheduler, memory and block parameters). ``_domain_model.FIELDS`` ties them together.
"""

from __future__ import annotations

from . import _xml
from ._cpuset import canonical_cpuset
from ._domain_general import KIB_PER_MIB, read_vcpus
from ._domain_xml import drop_if_empty, place, top
from ._libvirt import MEMORY_PARAM_UNLIMITED
from ._units import from_libvirt

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None


def _read_pins(tag, key):
    def read(root):
        return {
            int(e.get(key)): canonical_cpuset(e.get("cpuset"))
            for e in root.findall(f"cputune/{tag}")
            if e.get(key) is not None and e.get("cpuset")
        }

    return read


_CPUTUNE_ORDER = (
    "shares",
    "period",
    "quota",
    "global_period",
    "global_quota",
    "emulator_period",
    "emulator_quota",
    "iothread_period",
    "iothread_quota",
    "vcpupin",
    "emulatorpin",
    "iothreadpin",
    "emulatorsched",
    "vcpusched",
    "iothreadsched",
    "cachetune",
    "memorytune",
)


def _cputune_child(root, tag):
    cputune = top(root, "cputune")
    elem = etree.Element(tag)
    later = _CPUTUNE_ORDER[_CPUTUNE_ORDER.index(tag) + 1 :]
    place(cputune, elem, later)
    return elem


def _write_pins(tag, key):
    def write(root, pins):
        cputune = top(root, "cputune")
        for elem in cputune.findall(tag):
            cputune.remove(elem)
        for ident in sorted(pins, reverse=True):
            elem = _cputune_child(root, tag)
            elem.set(key, str(ident))
            elem.set("cpuset", pins[ident])
        # _cputune_child inserts before later tags; keep ascending order of ids
        pinned = cputune.findall(tag)
        for elem in sorted(pinned, key=lambda e: int(e.get(key))):
            elem.getparent().remove(elem)
        for elem in sorted(pinned, key=lambda e: int(e.get(key))):
            place(cputune, elem, _CPUTUNE_ORDER[_CPUTUNE_ORDER.index(tag) + 1 :])
        drop_if_empty(cputune)

    return write


read_vcpu_pins = _read_pins("vcpupin", "vcpu")
write_vcpu_pins = _write_pins("vcpupin", "vcpu")
read_iothread_pins = _read_pins("iothreadpin", "iothread")
write_iothread_pins = _write_pins("iothreadpin", "iothread")


def read_cputune_text(tag, conv=int):
    def read(root):
        value = _xml.text(root, f"cputune/{tag}")
        return conv(value) if value is not None else None

    return read


def write_cputune_text(tag):
    def write(root, value):
        cputune = top(root, "cputune")
        _xml.remove(cputune.find(tag))
        if value is not None and value != "":
            _cputune_child(root, tag).text = str(value)
        drop_if_empty(cputune)

    return write


def read_emulator_pin(root):
    return canonical_cpuset(_xml.attr(root, "cputune/emulatorpin", "cpuset"))


def write_emulator_pin(root, value):
    cputune = top(root, "cputune")
    _xml.remove(cputune.find("emulatorpin"))
    if value:
        _cputune_child(root, "emulatorpin").set("cpuset", value)
    drop_if_empty(cputune)


def read_iothreads(root):
    value = _xml.text(root, "iothreads")
    return int(value) if value else 0


def write_iothreads(root, value):
    _xml.remove(root.find("iothreadids"))
    if value:
        top(root, "iothreads").text = str(value)
    else:
        _xml.remove(root.find("iothreads"))


def read_numa(root):
    elem = root.find("numatune/memory")
    if elem is None:
        return {"mode": None, "nodeset": None}
    nodeset = elem.get("nodeset")
    return {"mode": elem.get("mode", "strict"), "nodeset": canonical_cpuset(nodeset)}


def write_numa(root, want):
    numatune = top(root, "numatune")
    _xml.remove(numatune.find("memory"))
    if want.get("mode") or want.get("nodeset"):
        elem = etree.Element("memory", mode=want.get("mode") or "strict")
        if want.get("nodeset"):
            elem.set("nodeset", want["nodeset"])
        numatune.insert(0, elem)
    drop_if_empty(numatune)


def read_hugepages(root):
    hp = root.find("memoryBacking/hugepages")
    if hp is None:
        return {"enabled": False, "size": None}
    page = hp.find("page")
    size = None
    if page is not None and page.get("size"):
        size = from_libvirt(page.get("size"), page.get("unit") or "KiB") // 1024
    return {"enabled": True, "size": size}


def write_hugepages(root, want):
    backing = top(root, "memoryBacking")
    _xml.remove(backing.find("hugepages"))
    if want.get("enabled"):
        hp = etree.Element("hugepages")
        if want.get("size"):
            _xml.sub(hp, "page", size=want["size"], unit="KiB")
        backing.insert(0, hp)
    drop_if_empty(backing)


def read_locked(root):
    return root.find("memoryBacking/locked") is not None


def write_locked(root, value):
    backing = top(root, "memoryBacking")
    _xml.remove(backing.find("locked"))
    if value:
        elem = etree.Element("locked")
        hp = backing.find("hugepages")
        if hp is not None:
            hp.addnext(elem)
        else:
            backing.insert(0, elem)
    drop_if_empty(backing)


def read_memtune(tag):
    def read(root):
        elem = root.find(f"memtune/{tag}")
        if elem is None or not elem.text:
            return None
        return from_libvirt(elem.text, elem.get("unit") or "KiB") // (1024 * 1024)

    return read


def project_no_limit(actual, want):
    """A limit of 0 asks for no limit, which reads back as None."""
    return 0 if actual is None and want == 0 else actual


def write_memtune(tag):
    order = ("hard_limit", "soft_limit", "swap_hard_limit", "min_guarantee")

    def write(root, mib):
        memtune = top(root, "memtune")
        _xml.remove(memtune.find(tag))
        if mib:
            elem = etree.Element(tag, unit="KiB")
            elem.text = str(mib * KIB_PER_MIB)
            place(memtune, elem, order[order.index(tag) + 1 :])
        drop_if_empty(memtune)

    return write


def read_blkio_weight(root):
    value = _xml.text(root, "blkiotune/weight")
    return int(value) if value else None


def write_blkio_weight(root, value):
    blkio = top(root, "blkiotune")
    _xml.remove(blkio.find("weight"))
    if value:
        elem = etree.Element("weight")
        elem.text = str(value)
        blkio.insert(0, elem)
    drop_if_empty(blkio)


def read_cachetune(root):
    result = []
    for tune in root.findall("cputune/cachetune"):
        vcpus = canonical_cpuset(tune.get("vcpus"))
        for cache in tune.findall("cache"):
            result.append(
                {
                    "vcpus": vcpus,
                    "cache_id": int(cache.get("id", 0)),
                    "level": int(cache.get("level", 3)),
                    "type": cache.get("type", "both"),
                    "size": from_libvirt(cache.get("size"), cache.get("unit") or "B") // 1024,
                }
            )
    return sorted(result, key=lambda c: (c["vcpus"], c["cache_id"], c["type"]))


def write_cachetune(root, want):
    cputune = top(root, "cputune")
    for elem in cputune.findall("cachetune"):
        cputune.remove(elem)
    groups: dict[str, list[dict]] = {}
    for entry in want:
        groups.setdefault(entry["vcpus"], []).append(entry)
    for vcpus in sorted(groups):
        tune = _cputune_child(root, "cachetune")
        tune.set("vcpus", vcpus)
        for entry in groups[vcpus]:
            _xml.sub(
                tune,
                "cache",
                id=entry["cache_id"],
                level=entry["level"],
                type=entry["type"],
                size=entry["size"],
                unit="KiB",
            )
    drop_if_empty(cputune)


# -- live appliers
def live_vcpu_pins(guest, pins, live_root, *_):
    live_pins = read_vcpu_pins(live_root)
    live_vcpus = read_vcpus(live_root) or 0
    for vcpu in sorted(set(pins) | set(live_pins)):
        if vcpu < live_vcpus and pins.get(vcpu) != live_pins.get(vcpu):
            guest.dom.pinVcpuFlags(vcpu, guest.cpumap(pins.get(vcpu)), guest.live)
    return True


def live_emulator_pin(guest, cpuset, *_):
    guest.dom.pinEmulator(guest.cpumap(cpuset), guest.live)
    return True


def live_iothread_pins(guest, pins, live_root, *_):
    live_pins = read_iothread_pins(live_root)
    threads = read_iothreads(live_root)
    for ident in sorted(set(pins) | set(live_pins)):
        if ident <= threads and pins.get(ident) != live_pins.get(ident):
            guest.dom.pinIOThread(ident, guest.cpumap(pins.get(ident)), guest.live)
    return True


def live_sched(key: str, unset: int):
    """A scheduler parameter; ``unset`` is libvirt's default, set when the option is 0."""

    def apply(guest, value, *_):
        guest.dom.setSchedulerParametersFlags({key: value or unset}, guest.live)
        return True

    return apply


def live_memtune(key: str):
    def apply(guest, mib, *_):
        value = mib * 1024 if mib else MEMORY_PARAM_UNLIMITED
        guest.dom.setMemoryParameters({key: value}, guest.live)
        return True

    return apply


def live_blkio_weight(guest, weight, *_):
    guest.dom.setBlkioParameters({"weight": weight or 100}, guest.live)
    return True
