#!/usr/bin/env python3
"""Runs a compose file's services with plain podman commands (podman 4.3).

podman-compose cannot honour `depends_on: condition: service_healthy` with podman
older than 4.6 (it ignores the condition), and without systemd podman schedules no
health checks at all. This runner covers the subset of the Compose specification
that compose.yaml uses: image, command, environment (map), ports, named volumes,
healthcheck (test, interval, timeout, retries, start_period), restart, dns, dns_opt,
dns_search and depends_on with service_started / service_healthy /
service_completed_successfully. It interpolates ${VAR}, ${VAR:-default},
${VAR-default} and ${VAR:?message} (required) from the environment. Health is checked by running `podman healthcheck
run` until it passes, so `podman ps` shows the containers healthy.

Two workarounds for podman 4.3's network stack (Debian bookworm: netavark and
aardvark-dns 1.4), figures in docs/decisions/0027-container-network-and-teardown.md:

* The network bridge's MAC address is pinned once the first container is on it
  (`pin_bridge_mac`). Left alone it follows the lowest MAC of its ports, and every
  container started before a change kept sending to the old one: its lookups (to
  aardvark-dns on the gateway address) went nowhere for 15-45 s.
* A service without `dns` gets the network's aardvark-dns as its only nameserver
  (`--dns <network gateway>`). podman lists the host's nameservers after it, which can
  only answer NXDOMAIN for a service name. aardvark-dns 1.4 drops or refuses the
  queries that arrive while it reloads, at every container start and stop on the
  network; a refused query then went to the host's server and the lookup failed.
  compose.yaml's `dns_opt` (timeout:1) keeps a dropped query to a one-second retry.

`down` stops the containers in reverse dependency order, a level at a time (the
gateway, then the services, then Postgres and Kinesis), as `docker compose down`
does: a service stopped together with its database and stream finishes its shutdown
(leases, checkpoints, in-flight calls) against containers that are going away, and
once hung in lookups of `kinesis` until podman killed it after 10 s.

  compose-run.py up FILE PROJECT      start everything in dependency order
  compose-run.py health FILE PROJECT  every long-running container healthy now? (exit 1 if not)
  compose-run.py logs FILE PROJECT    the last lines of every container's log
  compose-run.py down FILE PROJECT    remove the containers, the network, the volumes
"""
import os, re, shlex, subprocess, sys, time
import yaml

LABEL = "com.docker.compose.project"


def interpolate(value):
    if isinstance(value, str):
        def sub(m):
            name, op, default = m.group(1), m.group(2), m.group(3)
            current = os.environ.get(name)
            if op == ":-" and not current:
                return default
            if op == "-" and current is None:
                return default
            if op == ":?" and not current:
                sys.exit(f"compose-run: {name}: {default or 'must be set'}")
            return current or ""
        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-|:\?)([^}]*))?\}", sub, value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


def seconds(text, default):
    if text is None:
        return default
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(ms|h|m|s)", str(text)):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def podman(*args, check=True, capture=False):
    result = subprocess.run(["podman", *args], text=True,
                            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                            stderr=subprocess.PIPE if capture else None)
    if check and result.returncode != 0:
        sys.exit(f"compose-run: podman {' '.join(args[:3])} ... failed ({result.returncode})"
                 + (f": {result.stderr.strip()}" if capture else ""))
    return result


def deps_of(service):
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def order(services):
    done, result = set(), []
    def visit(name, path=()):
        if name in done:
            return
        if name in path:
            sys.exit(f"compose-run: a dependency cycle through {name}")
        for dep in deps_of(services[name]):
            visit(dep, path + (name,))
        done.add(name)
        result.append(name)
    for name in services:
        visit(name)
    return result


def cname(project, service):
    return f"{project}-{service}-1"


def health_cmd(test):
    if isinstance(test, str):
        return test
    kind, args = test[0], test[1:]
    if kind == "CMD-SHELL":
        return args[0]
    if kind == "CMD":
        return shlex.join(args)
    return None


def wait_healthy(project, name, service):
    check = service.get("healthcheck") or {}
    interval = seconds(check.get("interval"), 30)
    deadline = time.time() + seconds(check.get("start_period"), 0) + max(60, interval * int(check.get("retries", 3)))
    container = cname(project, name)
    while True:
        if podman("healthcheck", "run", container, check=False, capture=True).returncode == 0:
            return
        state = podman("inspect", "--format", "{{.State.Status}}", container, capture=True).stdout.strip()
        if state not in ("running", "created"):
            sys.exit(f"compose-run: {name} is {state}, not healthy")
        if time.time() > deadline:
            sys.exit(f"compose-run: {name} did not become healthy")
        time.sleep(min(interval, 1.0))


def wait_completed(project, name):
    code = podman("wait", cname(project, name), capture=True).stdout.strip()
    if code != "0":
        sys.exit(f"compose-run: {name} exited with {code}")


def levels(services):
    """Each service's depth: 0 without dependencies, else one more than its deepest."""
    depth = {}
    for name in order(services):
        depth[name] = 1 + max((depth[dep] for dep in deps_of(services[name])), default=-1)
    return depth


def as_list(value):
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def pin_bridge_mac(network):
    """Fixes the network bridge's MAC address at its current value (see the note at the top).

    A Linux bridge without an address of its own takes the lowest MAC of its ports, so
    it changes whenever a container with a lower one joins; containers that resolved the
    gateway's address before keep sending to the old MAC, the host drops those frames
    (not addressed to it), and each such container cannot reach aardvark-dns or anything
    beyond the gateway until its ARP entry expires (15-45 s). netavark 1.4 leaves the
    bridge's address unset. Rootless podman has no bridge here: nothing to do.
    """
    bridge = podman("network", "inspect", "--format", "{{.NetworkInterface}}", network,
                    capture=True, check=False).stdout.strip()
    base = f"/sys/class/net/{bridge}"
    try:
        with open(f"{base}/addr_assign_type") as f:
            if f.read().strip() == "3":  # NET_ADDR_SET: someone chose it, it stays
                return
        with open(f"{base}/address") as f:
            mac = f.read().strip()
    except OSError:
        return
    try:
        result = subprocess.run(["ip", "link", "set", "dev", bridge, "address", mac],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        problem = result.stderr.strip() if result.returncode != 0 else None
    except OSError as e:  # no iproute2
        problem = str(e)
    if problem:
        print(f"compose-run: could not pin {bridge}'s MAC ({problem}); "
              "lookups may stall while containers start", file=sys.stderr)


def up(compose, project):
    services = compose["services"]
    network = f"{project}_default"
    if podman("network", "exists", network, check=False).returncode != 0:
        podman("network", "create", "--label", f"{LABEL}={project}", network)
    # aardvark-dns listens on the network's gateway address (see the note at the top)
    resolver = podman("network", "inspect", "--format", "{{range .Subnets}}{{.Gateway}} {{end}}",
                      network, capture=True).stdout.split()
    for volume in (compose.get("volumes") or {}):
        full = f"{project}_{volume}"
        if podman("volume", "exists", full, check=False).returncode != 0:
            podman("volume", "create", "--label", f"{LABEL}={project}", full)
    for name in order(services):
        service = services[name]
        for dep, condition in deps_of(service).items():
            if condition == "service_healthy":
                wait_healthy(project, dep, services[dep])
            elif condition == "service_completed_successfully":
                wait_completed(project, dep)
        args = ["run", "-d", "--name", cname(project, name), "--label", f"{LABEL}={project}",
                "--network", network, "--network-alias", name, "--hostname", name]
        for key, value in (service.get("environment") or {}).items():
            args += ["--env", f"{key}={'' if value is None else value}"]
        for port in service.get("ports") or []:
            args += ["--publish", str(port)]
        for volume in service.get("volumes") or []:
            source, _, target = str(volume).partition(":")
            if not source.startswith(("/", ".")):
                source = f"{project}_{source}"
            args += ["--volume", f"{source}:{target}"]
        for server in as_list(service.get("dns")) or resolver[:1]:
            args += ["--dns", str(server)]
        for option in as_list(service.get("dns_opt")):
            args += ["--dns-option", str(option)]
        for domain in as_list(service.get("dns_search")):
            args += ["--dns-search", str(domain)]
        restart = service.get("restart", "no")
        if restart not in ("no", None):
            args += ["--restart", restart]
        check = service.get("healthcheck")
        if check and health_cmd(check["test"]):
            args += ["--health-cmd", health_cmd(check["test"]),
                     "--health-interval", str(check.get("interval", "30s")),
                     "--health-timeout", str(check.get("timeout", "30s")),
                     "--health-retries", str(check.get("retries", 3))]
        if "entrypoint" in service:
            entry = service["entrypoint"]
            args += ["--entrypoint", entry if isinstance(entry, str) else __import__("json").dumps(entry)]
        args.append(service["image"])
        command = service.get("command")
        if command:
            args += shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
        print(f"compose-run: starting {name}", file=sys.stderr, flush=True)
        # podman without systemd cannot schedule health checks; it says so and runs the container
        result = podman(*args, check=False, capture=True)
        if result.returncode != 0:
            sys.exit(f"compose-run: {name} did not start: {result.stderr.strip()}")
        pin_bridge_mac(network)  # the bridge exists once the first container is on it
    for name, service in services.items():
        if service.get("healthcheck"):
            wait_healthy(project, name, service)


def health(compose, project):
    bad = []
    for name, service in compose["services"].items():
        container = cname(project, name)
        if service.get("healthcheck"):
            ok = podman("healthcheck", "run", container, check=False, capture=True).returncode == 0
            status, _, restarts = podman("inspect", "--format", "{{.State.Health.Status}} {{.RestartCount}}", container,
                                         check=False, capture=True).stdout.strip().partition(" ")
            # a restart means the process died once: healthy now, but its log tells why
            print(f"  {name:18} {status}" + (f" (restarted {restarts}x)" if restarts not in ("", "0") else ""))
            if not ok or status != "healthy":
                bad.append(name)
        else:
            state = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container, check=False, capture=True).stdout.strip()
            print(f"  {name:18} {state} (one-shot)")
            if state != "exited 0":
                bad.append(name)
    if bad:
        sys.exit(f"compose-run: not healthy: {', '.join(bad)}")


def logs(compose, project):
    for name in compose["services"]:
        print(f"----- {name}", flush=True)
        subprocess.run(["podman", "logs", "--tail", "25", cname(project, name)], stderr=subprocess.STDOUT)


def down(compose, project):
    # dependents first, each level's containers together (see the note at the top)
    services = compose["services"]
    depth = levels(services)
    for level in sorted(set(depth.values()), reverse=True):
        names = [cname(project, name) for name, d in depth.items() if d == level]
        running = [n for n in names
                   if podman("container", "exists", n, check=False).returncode == 0]
        if running:
            podman("stop", "-t", "10", *running, check=False, capture=True)
    ids = podman("ps", "-aq", "--filter", f"label={LABEL}={project}", capture=True, check=False).stdout.split()
    if ids:
        # capture: without systemd podman complains it cannot remove health check timers
        podman("rm", "-f", "-t", "10", *ids, check=False, capture=True)
    for kind in ("network", "volume"):
        names = podman(kind, "ls", "-q", "--filter", f"label={LABEL}={project}", capture=True, check=False).stdout.split()
        if names:
            podman(kind, "rm", "-f", *names, check=False, capture=True)


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("up", "health", "logs", "down"):
        sys.exit(__doc__)
    verb, path, project = sys.argv[1:]
    with open(path) as f:
        compose = interpolate(yaml.safe_load(f))
    compose["services"] = {k: v for k, v in compose["services"].items()}
    {"up": up, "health": health, "logs": logs, "down": down}[verb](compose, project)


if __name__ == "__main__":
    main()
