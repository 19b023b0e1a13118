"""infra/ checked offline: the KubeRay manifests against KubeRay's CRD schemas and against the code
they run (CLI entrypoints, Serve config, images built by the Dockerfile), the compose file's
bindings. No Docker, Kubernetes or network: kustomize's few features used here are applied by
:func:`kustomize` below, which refuses any other.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib
import importlib.util
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
# KubeRay's published CRDs, copied into the repository (their README and LICENSE beside them).
CRDS = Path(__file__).resolve().parent / "data" / "kuberay-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
LAYERS = ["base", "overlays/local-kind", "overlays/gpu"]
SECRETS = {"lch-s3", "lch-postgres", "lch-api"}  # created by hand (infra/README.md)
GPU = "nvidia.com/gpu"
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def pin(package: str) -> str:
    """The ``==`` version pyproject.toml pins for ``package``."""
    for dep in PYPROJECT["project"]["dependencies"]:
        m = re.match(rf"^{re.escape(package)}(\[[^]]*\])?==([\w.]+)$", dep)
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml pins no {package}")


# --- a kustomize subset: resources, namespace, images, JSON 6902 patches ----------------------

def _pointer(doc, path: str):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, parts[-1]


def apply_op(doc: dict, op: dict) -> None:
    """One RFC 6902 operation (add, remove, replace, test) on ``doc``, in place."""
    parent, key = _pointer(doc, op["path"])
    value = copy.deepcopy(op.get("value"))
    if isinstance(parent, list):
        key = len(parent) if key == "-" else int(key)
        assert op["op"] == "add" or key < len(parent), f"{op}: no such item"
    else:
        assert op["op"] == "add" or key in parent, f"{op}: no such field"
    if op["op"] == "add" and isinstance(parent, list):
        parent.insert(key, value)
    elif op["op"] in ("add", "replace"):
        parent[key] = value
    elif op["op"] == "remove":
        del parent[key]
    elif op["op"] == "test":
        assert parent[key] == value, f"{op}: found {parent[key]!r}"
    else:
        raise AssertionError(f"unsupported patch operation {op}")


def containers(doc: dict) -> list[dict]:
    """Every container of ``doc``'s pod templates (Ray head/worker groups included)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                found.extend(node["containers"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc.get("spec", {}))
    return found


def image_name(image: str) -> tuple[str, str | None]:
    """(name, tag) of an image reference (the registry stays in the name)."""
    name, _, tag = image.rpartition(":")
    return (name, tag) if name and "/" not in tag else (image, None)


def kustomize(folder: Path) -> list[dict]:
    """The documents ``kubectl apply -k folder`` would apply."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
    assert not unknown, f"{folder}: this test's kustomize subset does not apply {unknown}"
    docs = []
    for entry in spec.get("resources", []):
        path = folder / entry
        docs += kustomize(path) if path.is_dir() else [
            d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in spec.get("patches", []):
        assert set(patch) == {"target", "patch"}, f"{folder}: only inline JSON 6902 patches"
        target = patch["target"]
        hits = [d for d in docs if d["kind"] == target["kind"]
                and d["metadata"]["name"] == target["name"]]
        assert len(hits) == 1, f"{folder}: patch target {target} matches {len(hits)} documents"
        for op in yaml.safe_load(patch["patch"]):
            apply_op(hits[0], op)
    for image in spec.get("images", []):
        for container in (c for d in docs for c in containers(d)):
            name, tag = image_name(container["image"])
            if name == image["name"]:
                name = image.get("newName", name)
                tag = image.get("newTag", tag)
                container["image"] = f"{name}:{tag}" if tag else name
    if spec.get("namespace"):
        for doc in docs:
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = spec["namespace"]
    return docs


@pytest.fixture(scope="module", params=LAYERS)
def layer(request) -> tuple[str, list[dict]]:
    return request.param, kustomize(K8S / request.param)


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def cluster_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    """(owner name, RayCluster spec) for RayClusters, RayServices and RayJobs with their own."""
    specs = [(d["metadata"]["name"], d["spec"]) for d in of_kind(docs, "RayCluster")]
    specs += [(d["metadata"]["name"], d["spec"]["rayClusterConfig"])
              for d in of_kind(docs, "RayService")]
    specs += [(d["metadata"]["name"], d["spec"]["rayClusterSpec"])
              for d in of_kind(docs, "RayJob") if "rayClusterSpec" in d["spec"]]
    return specs


def groups(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]


def gpus(container: dict) -> tuple:
    res = container.get("resources", {})
    return res.get("requests", {}).get(GPU), res.get("limits", {}).get(GPU)


# --- the CRD schemas, applied as the API server does -------------------------------------------

def structural(schema):
    """A CRD's OpenAPI v3 schema as JSON Schema, applied the way the API server applies it.

    ``x-kubernetes-int-or-string`` accepts integers and strings, ``nullable`` accepts null, and
    an object's undeclared fields are errors (kubectl's default field validation is Strict)
    unless ``x-kubernetes-preserve-unknown-fields``. Other ``x-kubernetes-*`` keys (list types,
    CEL rules) are dropped: CEL is not evaluated here.
    """
    if isinstance(schema, list):
        return [structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: structural(sub) for name, sub in value.items()}
        elif key in ("default", "enum", "example"):
            out[key] = value  # data, not schema
        else:
            out[key] = structural(value)
    if schema.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validators() -> dict[tuple[str, str], jsonschema.Draft4Validator]:
    """(apiVersion, kind) -> validator, for every served version of the three CRDs."""
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRDS}")
    found = {}
    for kind, name in CRD_FILES.items():
        crd = yaml.safe_load((CRDS / name).read_text())
        assert crd["spec"]["names"]["kind"] == kind
        for version in crd["spec"]["versions"]:
            if version["served"]:
                schema = structural(version["schema"]["openAPIV3Schema"])
                found[(f"{crd['spec']['group']}/{version['name']}", kind)] = (
                    jsonschema.Draft4Validator(schema))
    return found


def schema_errors(validators, doc: dict) -> list[str]:
    validator = validators[(doc["apiVersion"], doc["kind"])]
    return [f"{doc['kind']} {doc['metadata']['name']}: /{'/'.join(map(str, e.absolute_path))}: "
            f"{e.message}" for e in validator.iter_errors(doc)]


def test_ray_resources_validate_against_kuberay_crds(layer, validators):
    name, docs = layer
    ray = [d for d in docs if d["kind"] in CRD_FILES]
    assert sorted(d["kind"] for d in ray) == ["RayCluster", "RayJob", "RayJob", "RayService"]
    for doc in ray:
        assert doc["apiVersion"] == "ray.io/v1", "v1 is the served storage version"
        assert not schema_errors(validators, doc), "\n".join(schema_errors(validators, doc))


def test_validation_can_fail(validators):
    """The translated schemas reject what the API server rejects, and accept int-or-string."""
    base = {d["kind"]: d for d in kustomize(K8S / "base") if d["kind"] in CRD_FILES}
    cases = {
        "maxReplicas as a string": ("RayCluster", "/spec/workerGroupSpecs/0/maxReplicas", "8"),
        "a misspelt field": ("RayCluster", "/spec/headGroupSpec/rayStartParam", {}),
        "a rayStartParams value not a string": (
            "RayCluster", "/spec/headGroupSpec/rayStartParams/num-cpus", 0),
        "entrypoint as a list": ("RayJob", "/spec/entrypoint", ["lch", "ingest"]),
        "serveConfigV2 as a mapping": ("RayService", "/spec/serveConfigV2", {"applications": []}),
    }
    for case, (kind, path, value) in cases.items():
        doc = copy.deepcopy(base[kind])
        apply_op(doc, {"op": "add", "path": path, "value": value})
        assert schema_errors(validators, doc), f"{case} passed validation"
    doc = copy.deepcopy(base["RayCluster"])
    for cpu in (2, "2", "500m"):  # a quantity is int-or-string
        path = "/spec/headGroupSpec/template/spec/containers/0/resources/limits/cpu"
        apply_op(doc, {"op": "replace", "path": path, "value": cpu})
        assert not schema_errors(validators, doc)


# --- what KubeRay's operator checks beyond the schema, and what LCH relies on ------------------

def test_ray_clusters_as_kuberay_and_lch_expect(layer):
    name, docs = layer
    for doc in (d for d in docs if d["kind"] in CRD_FILES):
        # KubeRay's limits: its Service names (<name>-serve-svc, <name>-xxxxx-...) stay <= 63.
        limit = 53 if doc["kind"] == "RayCluster" else 47
        assert DNS1035.match(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= limit
    for owner, spec in cluster_specs(docs):
        assert spec["rayVersion"] == pin("ray"), f"{owner}: rayVersion is not the pinned Ray"
        assert spec["enableInTreeAutoscaling"] is True, owner
        head = spec["headGroupSpec"]
        # ShadowRay: every Ray API asks for the token, from a Secret the operator creates...
        assert spec.get("authOptions") == {"mode": "token", "secretName": "lch-ray-auth"}, owner
        # ... and the dashboard / Jobs API stays behind a ClusterIP Service, never exposed.
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", owner
        assert not head.get("enableIngress"), owner
        assert head["rayStartParams"].get("num-cpus") == "0", f"{owner}: head takes no work"
        for group in spec.get("workerGroupSpecs", []):
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group
        for group in groups(spec):
            (container,) = group["template"]["spec"]["containers"]
            refs = [next(iter(r.values()))["name"] for r in container.get("envFrom", [])]
            assert "lch-config" in refs, f"{owner}: MLFLOW_TRACKING_URI / LCH_HOME not passed"
            requests, limits = gpus(container)
            assert requests == limits, f"{owner}: {GPU} requests must equal limits"
    for service in of_kind(docs, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]
    gpu_groups = [g for _, s in cluster_specs(docs) for g in s.get("workerGroupSpecs", [])
                  if gpus(g["template"]["spec"]["containers"][0])[0]]
    if name == "overlays/local-kind":
        assert not gpu_groups, "local-kind is CPU only"
    else:
        (group,) = gpu_groups
        assert group["minReplicas"] == 0 and group["maxReplicas"] > 0, "GPUs scale from zero"


def test_rayjobs_run_lch_commands_on_the_cluster(layer):
    import typer
    from typer.main import get_command

    from lch.pipelines.cli import app

    group = get_command(app)
    name, docs = layer
    clusters = {d["metadata"]["name"]: d for d in of_kind(docs, "RayCluster")}
    has_gpus = any(gpus(c)[0] for c in containers(next(iter(clusters.values()))))
    commands = set()
    for job in of_kind(docs, "RayJob"):
        spec = job["spec"]
        # Submitted on demand (kubectl create -l lch/job=...), not with the platform.
        assert job["metadata"]["labels"]["lch/job"]
        assert "clusterSelector" in spec and "rayClusterSpec" not in spec, "runs on `lch`"
        assert not spec.get("suspend"), "KubeRay cannot suspend a clusterSelector RayJob"
        assert spec["clusterSelector"]["ray.io/cluster"] in clusters
        argv = shlex.split(spec["entrypoint"])
        assert argv[0] == "lch", spec["entrypoint"]
        assert argv[1] in group.commands, f"`{spec['entrypoint']}`: no such lch command"
        command = group.commands[argv[1]]
        try:
            args = command.make_context(argv[1], argv[2:]).params
        except typer.TyperException as exc:
            raise AssertionError(f"`{spec['entrypoint']}` is not a valid lch command") from exc
        commands.add(argv[1])
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        for word in argv[2:]:
            assert not word.startswith("-") or word.split("=")[0] in known, word
        if argv[1] == "ingest":
            assert args["manifest"].is_absolute() and args["manifest"].parts[1] == "data"
            cluster = clusters[spec["clusterSelector"]["ray.io/cluster"]]["spec"]
            for group_spec in groups(cluster):  # every node may open the movies
                mounts = group_spec["template"]["spec"]["containers"][0]["volumeMounts"]
                assert "/data" in [m["mountPath"] for m in mounts]
        if argv[1] == "train":
            assert args["gpu"] == has_gpus, f"{name}: --gpu where there are no GPU workers?"
    assert commands == {"ingest", "train"}
    assert not [d for d in docs if d["kind"] != "RayJob"
                and "lch/job" in d["metadata"].get("labels", {})]


# --- the Serve config: one source of truth -----------------------------------------------------

def _renderer():
    spec = importlib.util.spec_from_file_location("render_rayservice",
                                                  K8S / "render_rayservice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rayservice_serves_serving_config():
    render = _renderer()
    committed = (K8S / "base" / "rayservice.yaml").read_text()
    assert render.render(committed, render.serve_config()) == committed, (
        "infra/k8s/base/rayservice.yaml is stale: run python infra/k8s/render_rayservice.py")
    source = yaml.safe_load((REPO / "serving" / "config.yaml").read_text())
    (service,) = of_kind(kustomize(K8S / "base"), "RayService")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert embedded["http_options"]["host"] == "0.0.0.0", "Serve must bind the pod's interfaces"
    source["http_options"]["host"] = "0.0.0.0"
    assert embedded == source, "only http_options.host may differ from serving/config.yaml"

    from ray import serve

    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in head["containers"][0]["ports"]}
    assert ports["serve"] == embedded["http_options"]["port"]
    for app in embedded["applications"]:
        module_name, _, attr = app["import_path"].partition(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attr)), app["import_path"]
        module.AppArgs(**app.get("args", {}))  # the args build_app accepts
        for deployment in app.get("deployments", []):
            assert isinstance(getattr(module, deployment["name"]), serve.Deployment), deployment


# --- images ------------------------------------------------------------------------------------

def dockerfile() -> tuple[dict[str, str], dict[str, str]]:
    """The Dockerfile's stages (name -> FROM) and ARG defaults."""
    text = (INFRA / "docker" / "Dockerfile").read_text()
    froms = re.finditer(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M | re.I)
    stages = {m[2]: m[1] for m in froms}
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S*)", text, re.M))
    return stages, args


def built_images() -> dict[str, tuple[str, str]]:
    """tag -> (target, VARIANT) of the `docker build` commands in infra/README.md."""
    stages, args = dockerfile()
    built = {}
    for line in re.findall(r"^\s*docker build .*$", (INFRA / "README.md").read_text(), re.M):
        argv = shlex.split(line, comments=True)
        opts = dict(zip(argv[2::], argv[3::], strict=False))
        target = opts.get("--target")
        assert target in stages, f"{line}: no stage {target}"
        variant = args.get("VARIANT")
        for i, word in enumerate(argv[:-1]):
            if word == "--build-arg" and argv[i + 1].startswith("VARIANT="):
                variant = argv[i + 1].split("=", 1)[1]
        assert opts.get("-f") == "infra/docker/Dockerfile" and argv[-1] == ".", line
        built[opts["-t"]] = (target, variant)
    return built


def test_dockerfile_matches_pins():
    stages, args = dockerfile()
    assert args["RAY_VERSION"] == pin("ray")
    assert args["TORCH_VERSION"] == pin("torch")
    assert args["MLFLOW_VERSION"] == pin("mlflow")
    assert stages["base-cpu"] == "rayproject/ray:${RAY_VERSION}-py311"
    assert stages["base-gpu"] == "rayproject/ray:${RAY_VERSION}-py311-gpu"
    assert stages["runtime"] == "base-${VARIANT}" and {"runtime", "mlflow"} <= set(stages)
    version = PYPROJECT["project"]["version"]
    assert built_images() == {
        f"lch:{version}": ("runtime", "cpu"),
        f"lch:{version}-gpu": ("runtime", "gpu"),
        f"lch-mlflow:{pin('mlflow')}": ("mlflow", "cpu"),
    }
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {".git", ".venv", ".lch"} <= set(ignored)
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "platform", "pipelines",
                   "serving"):
        assert not any(fnmatch.fnmatch(needed, pattern) for pattern in ignored), needed


def test_manifests_use_built_images(layer):
    name, docs = layer
    built = built_images()
    for doc in docs:
        for container in containers(doc):
            image, tag = image_name(container["image"])
            assert tag and tag != "latest", f"{container['image']}: pin a tag"
            base = image.rsplit("/", 1)[-1]
            if doc["kind"] in CRD_FILES:
                assert base == "lch", f"{doc['kind']} runs {container['image']}"
            if doc["metadata"]["name"] == "mlflow":
                assert base == "lch-mlflow"
            if base in ("lch", "lch-mlflow"):
                target, variant = built[f"{base}:{tag}"]
                assert (variant == "gpu") == bool(gpus(container)[0]), container["image"]


# --- MLflow, secrets, compose ------------------------------------------------------------------

# The team server runs without MLflow's job runner (LCH submits no server-side jobs): its queue
# consumers poll the database, about half a core around the clock.
JOBS_OFF = ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")

def test_mlflow_server_reachable_by_the_tracking_uri(layer):
    name, docs = layer
    (config,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == "lch-config"]
    uri = urlsplit(config["data"]["MLFLOW_TRACKING_URI"])
    (server,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "mlflow"]
    (container,) = server["spec"]["template"]["spec"]["containers"]
    flags = dict(a.split("=", 1) for a in container["command"] if a.startswith("--"))
    assert container["command"][:2] == ["mlflow", "server"] and flags["--host"] == "0.0.0.0"
    assert flags["--backend-store-uri"].startswith("postgresql://")
    assert flags["--artifacts-destination"].startswith("s3://")
    assert any(fnmatch.fnmatch(uri.netloc, h) for h in flags["--allowed-hosts"].split(","))
    services = {d["metadata"]["name"]: d for d in of_kind(docs, "Service")}
    assert uri.port in [p["port"] for p in services[uri.hostname]["spec"]["ports"]]
    db = urlsplit(flags["--backend-store-uri"])
    assert db.port in [p["port"] for p in services[db.hostname]["spec"]["ports"]]
    assert {"name": JOBS_OFF[0], "value": JOBS_OFF[1]} in container["env"]


def test_no_secrets_committed(layer):
    name, docs = layer
    assert not of_kind(docs, "Secret"), "Secrets are created by hand, never committed"
    readme = (INFRA / "README.md").read_text()
    for doc in docs:
        for container in containers(doc):
            for env in container.get("env", []):
                if re.search(r"PASSWORD|SECRET|TOKEN|KEY", env["name"]):
                    assert "valueFrom" in env, f"{env['name']} must come from a Secret"
            refs = [r["secretRef"]["name"] for r in container.get("envFrom", [])
                    if "secretRef" in r]
            refs += [e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
                     if "secretKeyRef" in e.get("valueFrom", {})]
            assert set(refs) <= SECRETS, refs
    for secret in SECRETS:
        assert f"kubectl -n lch create secret generic {secret}" in readme, secret


def test_compose_publishes_on_loopback_only():
    compose = yaml.safe_load((INFRA / "mlflow" / "compose.yaml").read_text())
    example = (INFRA / "mlflow" / ".env.example").read_text()
    published = []
    for service_name, service in compose["services"].items():
        assert "network_mode" not in service
        for port in service.get("ports", []):
            host = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host == "127.0.0.1" and (isinstance(port, dict) or port.count(":") == 2), (
                f"{service_name} publishes {port} beyond loopback")
            published.append(service_name)
    assert "mlflow" in published and "postgres" not in published
    mlflow = compose["services"]["mlflow"]
    assert mlflow["image"] == f"lch-mlflow:{pin('mlflow')}"
    assert mlflow["build"]["target"] == "mlflow"
    assert (INFRA / "mlflow" / mlflow["build"]["context"] / mlflow["build"]["dockerfile"]).is_file()
    assert "--host=0.0.0.0" in mlflow["command"]
    assert mlflow["environment"][JOBS_OFF[0]] == JOBS_OFF[1]
    text = (INFRA / "mlflow" / "compose.yaml").read_text()
    for variable in set(re.findall(r"(?<!\$)\$\{(\w+)", text)):
        assert re.search(rf"^{variable}=", example, re.M), f"{variable} not in .env.example"
