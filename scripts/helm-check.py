"""Checks the Helm chart's rendered manifests against the server they deploy (run by scripts/helm-check.sh).

Usage: helm-check.py FEDGE_SERVER_BINARY RENDERED.yaml... [--with-aggregators RENDERED.yaml...]

For each rendering: its kinds (the root server's StatefulSet, its Services and server.toml's ConfigMap; with
aggregators, theirs too and their autoscaler, and nothing of theirs otherwise); for each StatefulSet (the root, the
aggregators) the container's ports against its rendered configuration's `listen` and `metrics`, its Services (a
headless governing one, one UDP Service for agents, none selecting the other's pods); every path the configuration
names under a mount of the right kind of volume (the certificates in a read-only Secret; the root's model in its
ConfigMap and its database and test set on the persistent volume; an aggregator's database and uplink state on its
emptyDir); the probes' command, run with the real fedge-server binary on the rendered configuration (it must load
and validate it, and an aggregator.toml broken on purpose must fail); the security settings; and the Dockerfile's
entry point, user, exposed port and volume against the pods. For the aggregators: the root they dial is the root's
Service, their agents' Service keeps an agent on one pod, each pod mounts only its own folder of the uplink Secret
(by its name), with a folder for every pod up to the autoscaler's maxReplicas holding the files the server reads
(shared/src/tls.rs), and the autoscaler scales on the server's connected-agents gauge (server/src/metrics.rs).
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
# The namespace scripts/helm-check.sh renders into.
NAMESPACE = "fedge"


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


def server_facts():
    """What the server reads, from its source: the uplink bundle's file names and the connected-agents gauge."""
    tls = open(os.path.join(ROOT, "shared/src/tls.rs")).read()
    files = {k: re.search(rf'pub const {k}: &str = "([^"]+)";', tls).group(1) for k in ["CERT", "KEY", "CA_CERT"]}
    metrics = open(os.path.join(ROOT, "server/src/metrics.rs")).read()
    prefix = re.search(r'Registry::with_prefix\("([a-z_]+)"\)', metrics).group(1)
    assert re.search(r'registry\.register\(\s*"agents_connected"', metrics), "server/src/metrics.rs: agents_connected"
    return {"bundle": [files["CERT"], files["KEY"], files["CA_CERT"]], "agents_metric": f"{prefix}_agents_connected"}


def selects(service, labels):
    return all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


def run_probe(server_bin, argv, text, config_path):
    """Runs a probe command with the real binary, on `text` in place of the pod's configuration file."""
    with tempfile.TemporaryDirectory() as d:
        local = os.path.join(d, "config.toml")
        open(local, "w").write(text)
        argv = [server_bin] + [local if a == config_path else a for a in argv[1:]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGE_SERVER")}
        return argv, subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


def check_workload(r, sts, server_bin, image, facts):
    """One StatefulSet (the root, or the aggregators) against the configuration file its pods run with."""
    name = sts["metadata"]["name"]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "fedge-server"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}

    def mount_of(path, container=c):
        best = None
        for m in container["volumeMounts"]:
            mp = m["mountPath"]
            if path == mp or path.startswith(mp.rstrip("/") + "/"):
                if best is None or len(mp) > len(best["mountPath"]):
                    best = m
        r.check(best is not None, f"{name}: {path} is under no mount")
        return best, posixpath.relpath(path, best["mountPath"])

    # The configuration: the file --config names, from the ConfigMap mounted there.
    args = c["args"]
    config_path = args[args.index("--config") + 1]
    m, rel = mount_of(config_path)
    cm_name = volumes[m["name"]]["configMap"]["name"]
    (cm,) = [d for d in r.of_kind("ConfigMap") if d["metadata"]["name"] == cm_name]
    key = posixpath.basename(config_path)
    r.check(m.get("subPath") == key and rel == "." and m.get("readOnly"), f"{name}: {key} mount")
    text = cm["data"][key]
    cfg = tomllib.loads(text)
    r.check(cfg.get("role", "server") in ["server", "aggregator"], f"{name}: role {cfg.get('role')!r}")
    aggregator = cfg.get("role") == "aggregator"

    # Ports.
    ports = {p["name"]: p for p in c["ports"]}
    r.check(ports["quic"]["containerPort"] == port_of(cfg["listen"]), f"{name}: quic port != {key} listen")
    r.check(ports["quic"]["protocol"] == "UDP", "QUIC is UDP")
    annotations = spec["template"]["metadata"].get("annotations", {})
    if "metrics" in cfg:
        mp = port_of(cfg["metrics"])
        r.check(ports.get("metrics", {}).get("containerPort") == mp, f"{name}: metrics port != {key} metrics")
        r.check(annotations.get("prometheus.io/port") == str(mp), f"{name}: the scrape annotation names another port")
        r.check(not cfg["metrics"].startswith("127."), f"{name}: metrics on loopback cannot be scraped")
    else:
        r.check("metrics" not in ports and "prometheus.io/port" not in annotations, f"{name}: metrics without {key}'s")

    # Services: the governing one headless, and one UDP Service for agents; none selects another workload's pods.
    labels = spec["template"]["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in r.of_kind("Service") if selects(s, labels)}
    r.check(spec["serviceName"] in services, f"{name}: serviceName is not a rendered Service of its pods")
    r.check(services[spec["serviceName"]]["spec"].get("clusterIP") == "None", f"{name}: governing Service not headless")
    for s in services.values():
        for p in s["spec"]["ports"]:
            r.check(p["targetPort"] in ports, f"{s['metadata']['name']} targets {p['targetPort']}, not a container port")
            r.check(p["protocol"] == ports[p["targetPort"]]["protocol"], f"{s['metadata']['name']}: protocol of {p['name']}")
    (quic_service,) = [s for n, s in services.items() if n != spec["serviceName"]]
    r.check([p["protocol"] for p in quic_service["spec"]["ports"]] == ["UDP"], f"{name}: the agents' Service is not UDP only")

    # Paths under mounts: certificates in a read-only Secret, data on a writable volume of the right kind.
    for k in ["ca", "cert", "key", "revoked"]:
        if k in cfg["tls"]:
            m, _ = mount_of(cfg["tls"][k])
            r.check("secret" in volumes[m["name"]] and m.get("readOnly"), f"{name}: tls.{k} is not in a read-only Secret")
    if aggregator:
        agg = cfg["aggregator"]
        r.check("model" not in cfg and "evaluation" not in cfg, f"{name}: an aggregator takes its root's model")
        r.check(not claims, f"{name}: an aggregator's data is a copy of its root's: no claim to outlive it")
        state_dir = agg.get("state_dir", cfg["data_dir"] + "-uplink")
        for p in [cfg["data_dir"], state_dir]:
            m, _ = mount_of(p)
            r.check("emptyDir" in volumes[m["name"]] and not m.get("readOnly"), f"{name}: {p} is not on the emptyDir")
        data_mount = m
    else:
        r.check(spec.get("replicas") == 1, "sled is single-writer: one replica")
        m, rel = mount_of(cfg["model"]["onnx"])
        model = volumes[m["name"]].get("configMap")
        r.check(model is not None and m.get("readOnly"), "the model is not in a read-only ConfigMap")
        r.check({"key": "model.onnx", "path": rel} in model.get("items", [{"key": rel, "path": rel}]), "model.onnx item")
        data_paths = [cfg["data_dir"]] + ([cfg["evaluation"]["test_data"]] if "evaluation" in cfg else [])
        for p in data_paths:
            m, _ = mount_of(p)
            r.check(m["name"] in claims and not m.get("readOnly"), f"{p} is not on the persistent volume")
        data_mount = m
        for init in pod.get("initContainers", []):
            script = " ".join(init["command"])
            r.check("evaluation" in cfg and f"dir={cfg['evaluation']['test_data']}\n" in script, "the init container waits elsewhere")
            r.check(mount_of(cfg["evaluation"]["test_data"], init)[0]["name"] in claims, "the init container's volume")
    r.check(data_mount["mountPath"] in image["volume"], f"{name}: the data mount is not the image's VOLUME")

    # Probes: the image's own binary, the same configuration, and a command the binary accepts.
    r.check(c.get("command") is None, f"{name}: the container overrides the image's entry point")
    r.check(not any(e["name"].startswith("FEDGE_SERVER") for e in c.get("env", [])), f"{name}: an override the probe check misses")
    ran = set()
    for kind in ["startupProbe", "readinessProbe", "livenessProbe"]:
        probe = c[kind]
        command = probe["exec"]["command"]
        r.check(command[:2] == image["entrypoint"] + ["probe"], f"{name}: {kind}: {command[:2]}")
        r.check(command[command.index("--config") + 1] == config_path, f"{name}: {kind}: another configuration")
        timeout_ms = int(command[command.index("--timeout-ms") + 1])
        r.check(probe["timeoutSeconds"] * 1000 > timeout_ms, f"{name}: {kind}: Kubernetes gives up before the probe does")
        if tuple(command) in ran:
            continue  # the same command on the same file: one run tells
        ran.add(tuple(command))
        argv, run = run_probe(server_bin, command, text, config_path)
        # Exit 2 is a usage error; 1 with the certificate's path means the configuration loaded and validated and
        # the probe went on to read the server certificate, which exists only in the pod.
        r.check(run.returncode == 1 and cfg["tls"]["cert"] in run.stderr, f"{name}: {kind}: {argv[1:]} gave {run.returncode}: {run.stderr}")
    if aggregator:
        # The same probe on an invalid aggregator.toml stops at validation, before the certificate: what the check
        # above accepts is a configuration the server validated, not one it skipped.
        bad = re.sub(r"(?m)^min_group = .*$", "min_group = 1", text)
        r.check(bad != text, f"{name}: {key} has no min_group line to break")
        argv, run = run_probe(server_bin, c["startupProbe"]["exec"]["command"], bad, config_path)
        r.check(run.returncode == 1 and "min_group" in run.stderr and cfg["tls"]["cert"] not in run.stderr,
                f"{name}: the probe accepted min_group = 1: {run.returncode}: {run.stderr}")

    # Security settings.
    ps = pod["securityContext"]
    r.check(ps.get("runAsNonRoot") is True and ps.get("runAsUser") == image["uid"], f"{name}: pod user (the image's USER)")
    r.check(pod.get("automountServiceAccountToken") is False, f"{name}: the server needs no API token")
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container["securityContext"]
        r.check(sc.get("readOnlyRootFilesystem") is True, f"{container['name']}: writable root filesystem")
        r.check(sc.get("allowPrivilegeEscalation") is False, f"{container['name']}: privilege escalation")
        r.check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{container['name']}: capabilities kept")
        for part in ["requests", "limits"]:
            r.check({"cpu", "memory"} <= set(container["resources"][part]), f"{container['name']}: {part}")
    return {"cfg": cfg, "config_path": config_path, "quic_service": quic_service, "container": c, "volumes": volumes}


def check_aggregators(r, sts, w, root, facts):
    """What only the aggregators need: their root, their own bundle each, and the autoscaler."""
    name = sts["metadata"]["name"]
    agg = w["cfg"]["aggregator"]
    # The root they dial: by default the root's agents' Service, in the cluster, on its port.
    host, port = agg["root"].rsplit(":", 1)
    rs = root["quic_service"]
    r.check(host == f"{rs['metadata']['name']}.{NAMESPACE}.svc", f"{name}: root {agg['root']} is not the root's Service")
    r.check(int(port) == rs["spec"]["ports"][0]["port"], f"{name}: root port {port} is not the root Service's")
    r.check(agg["root_name"].strip() != "", f"{name}: root_name")
    qs = w["quic_service"]["spec"]
    r.check(qs.get("sessionAffinity") == "ClientIP", f"{name}: an agent's datagrams must reach one aggregator")

    # Each pod's own bundle: the uplink Secret's folder named after the pod, mounted where [aggregator] bundle is.
    c, volumes = w["container"], w["volumes"]
    mounts = [m for m in c["volumeMounts"] if m["mountPath"] == agg["bundle"]]
    r.check(len(mounts) == 1, f"{name}: bundle {agg['bundle']} is not a mount of its own")
    (m,) = mounts
    r.check(m.get("subPathExpr") == "$(POD_NAME)" and m.get("readOnly"), f"{name}: the bundle mount is not the pod's folder")
    env = {e["name"]: e for e in c.get("env", [])}
    r.check(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
            f"{name}: POD_NAME is not the pod's name")
    secret = volumes[m["name"]].get("secret")
    r.check(secret is not None, f"{name}: the bundle is not a Secret")
    hpas = [h for h in r.of_kind("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == name]
    if hpas:
        (hpa,) = hpas
        ordinals = hpa["spec"]["maxReplicas"]
        r.check("replicas" not in sts["spec"], f"{name}: replicas set beside an autoscaler")
        r.check(hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet", f"{name}: the autoscaler's target")
        r.check(1 <= hpa["spec"]["minReplicas"] <= ordinals, f"{name}: minReplicas")
        (metric,) = hpa["spec"]["metrics"]
        r.check(metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == facts["agents_metric"],
                f"{name}: the autoscaler's metric is not the server's {facts['agents_metric']}")
        r.check(metric["pods"]["target"]["type"] == "AverageValue", f"{name}: target type")
        r.check("metrics" in w["cfg"], f"{name}: autoscaled on a metric the aggregators do not serve")
    else:
        ordinals = sts["spec"]["replicas"]
    cert, key, ca = facts["bundle"]
    want = []
    for k in range(ordinals):
        p = f"{name}-{k}"
        want += [{"key": f"{p}.{cert}", "path": f"{p}/{cert}"}, {"key": f"{p}.{key}", "path": f"{p}/{key}"},
                 {"key": ca, "path": f"{p}/{ca}"}]
    r.check(secret.get("items") == want, f"{name}: the uplink folders are not one per pod up to {ordinals}")


def check(r, server_bin, image, facts, aggregators):
    kinds = sorted(d["kind"] for d in r.docs)
    if aggregators:
        want = ["ConfigMap"] * 2 + ["HorizontalPodAutoscaler"] + ["Service"] * 4 + ["StatefulSet"] * 2
    else:
        want = ["ConfigMap", "Service", "Service", "StatefulSet"]
    r.check(kinds == want, f"kinds {kinds}")
    workloads = {}
    for sts in r.of_kind("StatefulSet"):
        w = check_workload(r, sts, server_bin, image, facts)
        workloads[w["cfg"].get("role", "server")] = (sts, w)
    r.check(sorted(workloads) == (["aggregator", "server"] if aggregators else ["server"]), f"roles {sorted(workloads)}")
    pods = [sts["spec"]["template"]["metadata"]["labels"] for sts, _ in workloads.values()]
    for s in r.of_kind("Service"):
        r.check(sum(selects(s, labels) for labels in pods) == 1, f"{s['metadata']['name']} selects not one workload")
    if aggregators:
        sts, w = workloads["aggregator"]
        check_aggregators(r, sts, w, workloads["server"][1], facts)
    return workloads["server"][1]["cfg"]


def main():
    server_bin, args = sys.argv[1], sys.argv[2:]
    split = args.index("--with-aggregators") if "--with-aggregators" in args else len(args)
    paths = [(p, False) for p in args[:split]] + [(p, True) for p in args[split + 1 :]]
    image = dockerfile()
    facts = server_facts()
    for i, (path, aggregators) in enumerate(paths):
        r = Rendering(path)
        cfg = check(r, server_bin, image, facts, aggregators)
        if i == 0:
            r.check(f"{port_of(cfg['listen'])}/udp" in image["expose"], "the image exposes another QUIC port")
    print(f"helm-check: structure of {len(paths)} renderings: ok")


main()
