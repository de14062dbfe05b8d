# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The domain's general fields: identity and metadata, memory, vCPUs, CPU model, OS and boot.

Each field has a reader (inactive XML -> plain comparable value) and a writer (patches the
value into a definition); those a running guest can take have a live applier, called by
``_domain_live.LiveUpdater`` as ``apply(guest, value, live_root, new_root, result)``. The
field table (``_domain_model.FIELDS``) says which go together.
"""

from __future__ import annotations

from . import _xml
from ._domain_devices import int_or_none
from ._domain_xml import drop_if_empty, place, set_text, top
from ._libvirt import libvirt
from ._units import from_libvirt

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None

NS_VIRTOPS = "https://virtops.dev/xmlns/kvm/1.0"
NS_PREFIX = "virtops"
KIB_PER_MIB = 1024


# -- identity and metadata
def read_title(root):
    return _xml.text(root, "title") or ""


def write_title(root, value):
    set_text(root, "title", value)


def read_description(root):
    return _xml.text(root, "description") or ""


def write_description(root, value):
    set_text(root, "description", value)


def read_tags(root):
    meta = root.find("metadata")
    if meta is None:
        return []
    tags = meta.find(f"{{{NS_VIRTOPS}}}tags")
    if tags is None:
        return []
    return sorted({t.text.strip() for t in tags if isinstance(t.tag, str) and t.text})


def tags_element(tags: list[str]):
    """Our metadata element (also given to ``setMetadata`` for the live definition)."""
    elem = etree.Element(f"{{{NS_VIRTOPS}}}tags", nsmap={NS_PREFIX: NS_VIRTOPS})
    for tag in sorted(set(tags)):
        etree.SubElement(elem, f"{{{NS_VIRTOPS}}}tag").text = tag
    return elem


def write_tags(root, tags):
    meta = root.find("metadata")
    if meta is not None:
        _xml.remove(meta.find(f"{{{NS_VIRTOPS}}}tags"))
    if tags:
        top(root, "metadata").append(tags_element(tags))
    drop_if_empty(root.find("metadata"))


# -- memory and vCPUs
def read_mem(tag):
    def read(root):
        elem = root.find(tag)
        if elem is None or not elem.text:
            return None
        return from_libvirt(elem.text, elem.get("unit")) // (1024 * 1024)

    return read


def write_mem(tag):
    def write(root, mib):
        elem = top(root, tag)
        elem.attrib.clear()
        elem.set("unit", "KiB")
        elem.text = str(mib * KIB_PER_MIB)

    return write


def read_vcpus(root):
    elem = root.find("vcpu")
    if elem is None or not elem.text:
        return None
    return int(elem.get("current", elem.text))


def read_max_vcpus(root):
    elem = root.find("vcpu")
    return int(elem.text) if elem is not None and elem.text else None


def write_vcpus(root, value):
    elem = top(root, "vcpu")
    maximum = int(elem.text) if elem.text else value
    maximum = max(maximum, value)
    elem.text = str(maximum)
    if value < maximum:
        elem.set("current", str(value))
    else:
        elem.attrib.pop("current", None)


def write_max_vcpus(root, value):
    elem = top(root, "vcpu")
    current = int(elem.get("current", elem.text or value))
    elem.text = str(value)
    if current < value:
        elem.set("current", str(current))
    else:
        elem.attrib.pop("current", None)


# -- CPU, OS and boot
def read_virt_type(root):
    return root.get("type")


def write_virt_type(root, value):
    root.set("type", value)


def read_cpu(root):
    cpu = root.find("cpu")
    if cpu is None:
        return {"mode": None, "model": None, "sockets": None, "cores": None, "threads": None}
    topo = cpu.find("topology")
    mode = cpu.get("mode") or ("custom" if cpu.find("model") is not None else None)
    return {
        "mode": mode,
        "model": _xml.text(cpu, "model"),
        "sockets": int_or_none(topo.get("sockets")) if topo is not None else None,
        "cores": int_or_none(topo.get("cores")) if topo is not None else None,
        "threads": int_or_none(topo.get("threads")) if topo is not None else None,
    }


def write_cpu(root, want):
    cpu = top(root, "cpu")
    if want.get("mode") is not None:
        cpu.set("mode", want["mode"])
        if want["mode"] != "custom" and want.get("model") is None:
            _xml.remove(cpu.find("model"))
            cpu.attrib.pop("match", None)
    if want.get("model") is not None:
        if want.get("mode") is None:
            cpu.set("mode", "custom")
        model = cpu.find("model")
        if model is None:
            model = etree.Element("model", fallback="allow")
            cpu.insert(0, model)
        model.text = want["model"]
    topo_keys = ("sockets", "cores", "threads")
    if any(want.get(k) is not None for k in topo_keys):
        topo = _xml.ensure(cpu, "topology")
        old = {k: topo.get(k) for k in topo_keys}
        topo.attrib.clear()
        topo.set("sockets", str(want.get("sockets") or old["sockets"] or 1))
        topo.set("dies", "1")
        topo.set("cores", str(want.get("cores") or old["cores"] or 1))
        topo.set("threads", str(want.get("threads") or old["threads"] or 1))


def _os(root):
    os_elem = top(root, "os")
    if os_elem.find("type") is None:
        os_elem.insert(0, etree.Element("type"))
        os_elem.find("type").text = "hvm"
    return os_elem


_OS_ORDER = ("type", "firmware", "loader", "nvram", "kernel", "initrd", "cmdline", "boot")


def _os_child(root, tag):
    os_elem = _os(root)
    elem = os_elem.find(tag)
    if elem is None:
        elem = etree.Element(tag)
        later = _OS_ORDER[_OS_ORDER.index(tag) + 1 :]
        place(os_elem, elem, later)
    return elem


def read_machine(root):
    return _xml.attr(root, "os/type", "machine")


def write_machine(root, value):
    _os(root).find("type").set("machine", value)


def read_firmware(root):
    os_elem = root.find("os")
    if os_elem is None:
        return "bios"
    if os_elem.get("firmware") == "efi":
        return "uefi"
    loader = os_elem.find("loader")
    if loader is not None and (
        loader.get("type") == "pflash" or "OVMF" in (loader.text or "").upper()
    ):
        return "uefi"
    return "bios"


def write_firmware(root, value):
    os_elem = _os(root)
    if value == "uefi":
        if read_firmware(root) != "uefi":
            os_elem.set("firmware", "efi")
    else:
        os_elem.attrib.pop("firmware", None)
        for tag in ("firmware", "loader", "nvram"):
            _xml.remove(os_elem.find(tag))


def read_secure_boot(root):
    os_elem = root.find("os")
    if os_elem is None:
        return False
    for feature in os_elem.findall("firmware/feature"):
        if feature.get("name") == "secure-boot":
            return feature.get("enabled") == "yes"
    return _xml.attr(os_elem, "loader", "secure") == "yes"


def write_secure_boot(root, value):
    os_elem = _os(root)
    loader = os_elem.find("loader")
    if loader is not None and loader.get("secure") is not None:
        loader.set("secure", "yes" if value else "no")
    if os_elem.get("firmware") == "efi" or loader is None:
        fw = _os_child(root, "firmware")
        for feature in fw.findall("feature"):
            if feature.get("name") == "secure-boot":
                fw.remove(feature)
        _xml.sub(fw, "feature", enabled=value, name="secure-boot")
    if value:  # secure boot needs SMM (and libvirt refuses to start without it)
        smm = _xml.ensure(top(root, "features"), "smm")
        smm.set("state", "on")


def read_os_text(tag):
    def read(root):
        return _xml.text(root, f"os/{tag}") or ""

    return read


def write_os_text(tag):
    def write(root, value):
        if value:
            _os_child(root, tag).text = value
        else:
            _xml.remove(_os(root).find(tag))

    return write


def read_boot(root):
    return [b.get("dev") for b in root.findall("os/boot")]


def write_boot(root, devs):
    os_elem = _os(root)
    for elem in os_elem.findall("boot"):
        os_elem.remove(elem)
    anchor = None
    for i, elem in enumerate(os_elem):
        if elem.tag in _OS_ORDER[: _OS_ORDER.index("boot")]:
            anchor = i
    position = (anchor + 1) if anchor is not None else len(os_elem)
    for offset, dev in enumerate(devs):
        os_elem.insert(position + offset, etree.Element("boot", dev=dev))


# -- live appliers
def live_title(guest, value, *_):
    guest.dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_TITLE, value or None, None, None, guest.live)
    return True


def live_description(guest, value, *_):
    guest.dom.setMetadata(
        libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, value or None, None, None, guest.live
    )
    return True


def live_tags(guest, value, *_):
    text = None
    if value:  # libvirt puts the element and its children into our namespace itself
        elem = etree.Element("tags")
        for tag in sorted(set(value)):
            etree.SubElement(elem, "tag").text = tag
        text = _xml.to_string(elem, pretty=False)
    guest.dom.setMetadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT, text, NS_PREFIX, NS_VIRTOPS, guest.live
    )
    return True


def _above_live_maximum(name: str, value: int, live_max, unit: str, result) -> bool:
    """A value above the running guest's maximum waits for the next boot."""
    if live_max is None or value <= live_max:
        return False
    result.pending.append(name)
    result.warnings.append(
        f"{name} {value}{unit} is above the running guest's maximum ({live_max}{unit}): "
        "it applies at the next boot"
    )
    return True


def live_memory(guest, mib, live_root, _new, result):
    if _above_live_maximum("memory", mib, read_mem("memory")(live_root), " MiB", result):
        return False
    guest.dom.setMemoryFlags(mib * 1024, guest.live)
    return True


def live_vcpus(guest, count, live_root, _new, result):
    if _above_live_maximum("vcpus", count, read_max_vcpus(live_root), "", result):
        return False
    guest.dom.setVcpusFlags(count, guest.live)
    return True
