"""Checks the Helm chart's rendered manifests against the server they deploy (run by scripts/helm-check.sh).

Usage: helm-check.py FEDGE_SERVER_BINARY RENDERED.yaml...

For each rendering: its kinds (the root server's StatefulSet, its Services and server.toml's ConfigMap, and nothing
for the aggregator role the server does not have yet); the container's ports against the rendered server.toml's
`listen` and `metrics`; every path server.toml names under a mount of the right kind of volume (the certificates
in the Secret, the model in its ConfigMap, the database and the test set on the persistent volume); the probes'
command, run with the real fedge-server binary on the rendered server.toml; the security settings; and the
Dockerfile's entry point, user, exposed port and volume against the pod.
"""

import json
import os
import posixpath
import re
import subprocess
import sys
import tempfile
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dockerfile():
    """The final image's ENTRYPOINT, USER, EXPOSE and VOLUME, from the repository's Dockerfile."""
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    final = text[text.rindex("\nFROM ") :]
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.*)$", final, re.M).group(1))
    user = re.search(r"^USER (\d+):(\d+)$", final, re.M)
    expose = re.search(r"^EXPOSE (.*)$", final, re.M).group(1).split()
    volume = json.loads(re.search(r"^VOLUME (.*)$", final, re.M).group(1))
    return {"entrypoint": entrypoint, "uid": int(user.group(1)), "expose": expose, "volume": volume}


class Rendering:
    def __init__(self, path):
        self.path = path
        self.docs = [d for d in yaml.safe_load_all(open(path)) if d]

    def fail(self, message):
        print(f"helm-check: FAILED: {self.path}: {message}", file=sys.stderr)
        sys.exit(1)

    def check(self, condition, message):
        if not condition:
            self.fail(message)

    def of_kind(self, kind):
        return [d for d in self.docs if d["kind"] == kind]


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def check(r, server_bin, image):
    kinds = sorted(d["kind"] for d in r.docs)
    r.check(kinds == ["ConfigMap", "Service", "Service", "StatefulSet"], f"kinds {kinds}")
    r.check("aggregator" not in open(r.path).read().lower(), "a manifest for the aggregator role, which the server lacks")
    (cm,) = r.of_kind("ConfigMap")
    text = cm["data"]["server.toml"]
    cfg = tomllib.loads(text)
    (sts,) = r.of_kind("StatefulSet")
    spec = sts["spec"]
    r.check(spec["replicas"] == 1, "sled is single-writer: one replica")
    pod = spec["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "fedge-server"]

    # Ports.
    ports = {p["name"]: p for p in c["ports"]}
    r.check(ports["quic"]["containerPort"] == port_of(cfg["listen"]), "quic port != server.toml listen")
    r.check(ports["quic"]["protocol"] == "UDP", "QUIC is UDP")
    annotations = spec["template"]["metadata"].get("annotations", {})
    if "metrics" in cfg:
        m = port_of(cfg["metrics"])
        r.check(ports.get("metrics", {}).get("containerPort") == m, "metrics port != server.toml metrics")
        r.check(annotations.get("prometheus.io/port") == str(m), "the scrape annotation names another port")
    else:
        r.check("metrics" not in ports and "prometheus.io/port" not in annotations, "metrics without server.toml's")
    labels = spec["template"]["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in r.of_kind("Service")}
    r.check(spec["serviceName"] in services, "the StatefulSet's serviceName is not a rendered Service")
    r.check(services[spec["serviceName"]]["spec"].get("clusterIP") == "None", "the governing Service is not headless")
    for s in services.values():
        r.check(all(labels.get(k) == v for k, v in s["spec"]["selector"].items()), f"{s['metadata']['name']} selects no pod")
        for p in s["spec"]["ports"]:
            r.check(p["targetPort"] in ports, f"{s['metadata']['name']} targets {p['targetPort']}, not a container port")
            r.check(p["protocol"] == ports[p["targetPort"]]["protocol"], f"{s['metadata']['name']}: protocol of {p['name']}")
    (quic_service,) = [s for n, s in services.items() if n != spec["serviceName"]]
    r.check([p["protocol"] for p in quic_service["spec"]["ports"]] == ["UDP"], "the agents' Service is not UDP only")

    # Paths under mounts.
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}

    def mount_of(path, container=c):
        best = None
        for m in container["volumeMounts"]:
            mp = m["mountPath"]
            if path == mp or path.startswith(mp.rstrip("/") + "/"):
                if best is None or len(mp) > len(best["mountPath"]):
                    best = m
        r.check(best is not None, f"{path} is under no mount")
        return best, posixpath.relpath(path, best["mountPath"])

    args = c["args"]
    config_path = args[args.index("--config") + 1]
    m, rel = mount_of(config_path)
    r.check(volumes[m["name"]]["configMap"]["name"] == cm["metadata"]["name"], "--config is not the ConfigMap")
    r.check(m.get("subPath") == "server.toml" and rel == "." and m.get("readOnly"), "server.toml mount")
    for key in ["ca", "cert", "key", "revoked"]:
        if key in cfg["tls"]:
            m, rel = mount_of(cfg["tls"][key])
            r.check("secret" in volumes[m["name"]] and m.get("readOnly"), f"tls.{key} is not in a read-only Secret")
    m, rel = mount_of(cfg["model"]["onnx"])
    model = volumes[m["name"]].get("configMap")
    r.check(model is not None and m.get("readOnly"), "the model is not in a read-only ConfigMap")
    r.check({"key": "model.onnx", "path": rel} in model.get("items", [{"key": rel, "path": rel}]), "model.onnx item")
    data_paths = [cfg["data_dir"]] + ([cfg["evaluation"]["test_data"]] if "evaluation" in cfg else [])
    for p in data_paths:
        m, _ = mount_of(p)
        r.check(m["name"] in claims and not m.get("readOnly"), f"{p} is not on the persistent volume")
    r.check(m["mountPath"] in image["volume"], "the data mount is not the image's VOLUME")
    for init in pod.get("initContainers", []):
        script = " ".join(init["command"])
        r.check("evaluation" in cfg and f"dir={cfg['evaluation']['test_data']}\n" in script, "the init container waits elsewhere")
        r.check(mount_of(cfg["evaluation"]["test_data"], init)[0]["name"] in claims, "the init container's volume")

    # Probes: the image's own binary, the same configuration, and a command the binary accepts.
    r.check(c.get("command") is None, "the container overrides the image's entry point")
    for kind in ["startupProbe", "readinessProbe", "livenessProbe"]:
        probe = c[kind]
        command = probe["exec"]["command"]
        r.check(command[:2] == image["entrypoint"] + ["probe"], f"{kind}: {command[:2]}")
        r.check(command[command.index("--config") + 1] == config_path, f"{kind}: another configuration")
        timeout_ms = int(command[command.index("--timeout-ms") + 1])
        r.check(probe["timeoutSeconds"] * 1000 > timeout_ms, f"{kind}: Kubernetes gives up before the probe does")
        with tempfile.TemporaryDirectory() as d:
            local = os.path.join(d, "server.toml")
            open(local, "w").write(text)
            argv = [server_bin] + [local if a == config_path else a for a in command[1:]]
            env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGE_SERVER")}
            run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        # Exit 2 is a usage error; 1 with the certificate's path means the configuration loaded and the probe
        # went on to read the server certificate, which exists only in the pod.
        r.check(run.returncode == 1 and cfg["tls"]["cert"] in run.stderr, f"{kind}: {argv[1:]} gave {run.returncode}: {run.stderr}")

    # Security settings.
    ps = pod["securityContext"]
    r.check(ps.get("runAsNonRoot") is True and ps.get("runAsUser") == image["uid"], "pod user (the image's USER)")
    r.check(pod.get("automountServiceAccountToken") is False, "the server needs no API token")
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container["securityContext"]
        r.check(sc.get("readOnlyRootFilesystem") is True, f"{container['name']}: writable root filesystem")
        r.check(sc.get("allowPrivilegeEscalation") is False, f"{container['name']}: privilege escalation")
        r.check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{container['name']}: capabilities kept")
        for part in ["requests", "limits"]:
            r.check({"cpu", "memory"} <= set(container["resources"][part]), f"{container['name']}: {part}")
    return cfg


def main():
    server_bin, paths = sys.argv[1], sys.argv[2:]
    image = dockerfile()
    for i, path in enumerate(paths):
        r = Rendering(path)
        cfg = check(r, server_bin, image)
        if i == 0:
            r.check(f"{port_of(cfg['listen'])}/udp" in image["expose"], "the image exposes another QUIC port")
    print(f"helm-check: structure of {len(paths)} renderings: ok")


main()
