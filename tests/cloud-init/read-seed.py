"""Reads a NoCloud seed's files the way cloud-init does, with cloud-init's own code, and
prints what cloud-init makes of them as JSON:

    {"meta_data": {...}, "network_config": {...} or null,
     "network_state": [{"mac_address": ...}, ...] or null,
     "cloud_config": {...}, "scripts": ["..."], "other_parts": ["text/..."]}

usage: PYTHONPATH=$(tests/cloud-init/fetch.sh) /usr/bin/python3 read-seed.py DIR

DIR holds the seed's files (meta-data, user-data, network-config). The user data goes
through cloud-init's UserDataProcessor (MIME detection, content types, nesting, base64),
then every text/cloud-config part through its cloud-config handler, which merges them
(Merge-Type headers included) exactly as a booting guest would.
"""
import json
import os
import sys
import tempfile

from cloudinit import handlers, helpers, util
from cloudinit import user_data as ud
from cloudinit.handlers.cloud_config import CloudConfigPartHandler
from cloudinit.net import network_state
from cloudinit.settings import PER_ALWAYS


def main(seed_dir):
    def read(name):
        path = os.path.join(seed_dir, name)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            return f.read()

    out = {"meta_data": util.load_yaml(read("meta-data"))}
    network = read("network-config")
    out["network_config"] = util.load_yaml(network) if network is not None else None
    out["network_state"] = None
    if out["network_config"] is not None:
        state = network_state.parse_net_config_data(out["network_config"])
        out["network_state"] = [
            {"name": i.get("name"), "mac_address": i.get("mac_address"),
             "subnets": [s.get("type") for s in i.get("subnets", [])]}
            for i in state.iter_interfaces()
        ]

    tmp = tempfile.mkdtemp()
    paths = helpers.Paths({"cloud_dir": tmp, "run_dir": tmp})
    message = ud.UserDataProcessor(paths).process(read("user-data") or b"")
    cloud_config = CloudConfigPartHandler(paths)
    cloud_config.handle_part(None, handlers.CONTENT_START, None, None, None, None)
    scripts, others = [], []
    for part in message.walk():
        if part.get_content_maintype() == "multipart":
            continue
        ctype = part.get_content_type()
        payload = util.fully_decoded_payload(part)
        if isinstance(payload, bytes):
            payload = payload.decode("utf-8")
        if ctype == "text/cloud-config":
            cloud_config.handle_part(
                None, ctype, part.get_filename() or "part", payload, PER_ALWAYS, dict(part)
            )
        elif ctype == "text/x-shellscript":
            scripts.append(payload)
        else:
            others.append(ctype)
    out["cloud_config"] = cloud_config.cloud_buf or {}
    out["scripts"] = scripts
    out["other_parts"] = others
    json.dump(out, sys.stdout, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
