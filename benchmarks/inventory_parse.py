"""Time an inventory plugin's own work: ``parse()`` of each source, in this process.

    VENV/bin/python benchmarks/inventory_parse.py PLUGIN SOURCE [SOURCE ...]

Run with either side's Python (ours or the peer's virtualenv). Prints JSON: the seconds
spent in the plugin's ``parse`` over all sources (reading the hypervisors and filling the
inventory, what ``ansible-inventory`` does before its output) and the hosts it made.
``ANSIBLE_COLLECTIONS_PATH`` says where collections are, as for ansible-inventory.
"""

from __future__ import annotations

import json
import os
import sys
import time

from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader, inventory_loader


def main(argv: list[str]) -> int:
    plugin_name, *sources = argv
    paths = [p for p in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(":") if p]
    init_plugin_loader(paths)
    inventory = InventoryData()
    loader = DataLoader()
    seconds = 0.0
    for source in sources:
        plugin = inventory_loader.get(plugin_name)
        started = time.monotonic()
        plugin.parse(inventory, loader, source, cache=False)
        seconds += time.monotonic() - started
    hosts = [h for h in inventory.hosts if h != "localhost"]
    print(json.dumps({"seconds": seconds, "hosts": len(hosts)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
