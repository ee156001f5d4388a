#!/usr/bin/env python3
"""Runs a compose file's services with plain podman commands (podman 4.3).

podman-compose cannot honour `depends_on: condition: service_healthy` with podman
older than 4.6 (it ignores the condition), and without systemd podman schedules no
health checks at all. This runner covers the subset of the Compose specification
that compose.yaml uses: image, command, environment (map), ports, named volumes,
healthcheck (test, interval, timeout, retries, start_period), restart and depends_on
with service_started / service_healthy / service_completed_successfully. It
interpolates ${VAR}, ${VAR:-default} and ${VAR-default} from the environment. Health
is checked by running `podman healthcheck run` until it passes, so `podman ps` shows
the containers healthy.

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
            return current or ""
        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}", sub, value)
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


def up(compose, project):
    services = compose["services"]
    network = f"{project}_default"
    if podman("network", "exists", network, check=False).returncode != 0:
        podman("network", "create", "--label", f"{LABEL}={project}", network)
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
    for name, service in services.items():
        if service.get("healthcheck"):
            wait_healthy(project, name, service)


def health(compose, project):
    bad = []
    for name, service in compose["services"].items():
        container = cname(project, name)
        if service.get("healthcheck"):
            ok = podman("healthcheck", "run", container, check=False, capture=True).returncode == 0
            status = podman("inspect", "--format", "{{.State.Health.Status}}", container, check=False, capture=True).stdout.strip()
            print(f"  {name:18} {status}")
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
