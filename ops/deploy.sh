#!/usr/bin/env bash
# Install Aether into a prefix and start it under a supervisor: idempotent (a second run with the
# same source and options changes nothing, and says so), `--dry-run` prints every step instead.
#
#   ops/deploy.sh --prefix /opt/aether --user aether --init systemd --processes 2
#   ops/deploy.sh --prefix /srv/aether --init supervisor          # a supervisord of its own
#   ops/deploy.sh --dry-run ...                                   # what it would do
#
# Layout under the prefix:
#   venv/           its own virtualenv; Aether installed from --source (default: this checkout)
#   etc/            config.toml and secrets/ (from `aether init`, or --config FILE), kept once there;
#                   supervisord.conf and supervisor.d/aether.conf (--init supervisor)
#   data/ log/ run/ state, logs, pid files and sockets, owned by the service user
#   bin/healthcheck ops/healthcheck
# systemd units go to --unit-dir (default /etc/systemd/system).
#
# After (re)starting, every process is checked with bin/healthcheck (up to 30 s for it to come
# up): a CRITICAL or UNKNOWN answer fails the deploy (exit 1); a WARNING is printed and passes.
# Network: only pip's package index (the source is installed from the local checkout).
# tests/test_ops_deploy.py runs it for real into a temporary prefix, twice, and dry.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source_dir=$(cd "$here/.." && pwd)
prefix=/opt/aether
user=""
init=supervisor
processes=2
config=""
python=python3
unit_dir=/etc/systemd/system
port=8000
http_port=9000
start=1
dry_run=0

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; cat <<'USAGE'
Options:
  --prefix DIR        install here (default /opt/aether)
  --source DIR        the Aether source tree to install (default: this checkout)
  --user NAME         run as this system user (created when missing); default: the current user
  --init KIND         supervisor (default), systemd, or none (install only)
  --processes N       Aether processes, on ports port+1 .. port+N (default 2)
  --config FILE       use this config instead of `aether init` (only when etc/ has none yet)
  --port P            [server] port base for `aether init` (default 8000)
  --http-port P       [http] port base for `aether init` (default 9000)
  --python PY         the Python that makes the venv (default python3)
  --unit-dir DIR      where systemd units go (default /etc/systemd/system)
  --no-start          install only: do not start or restart anything, no health check
  --dry-run           print every step, change nothing
USAGE
}

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --source) source_dir=$(cd "$2" && pwd); shift 2 ;;
        --user) user=$2; shift 2 ;;
        --init) init=$2; shift 2 ;;
        --processes) processes=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --http-port) http_port=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        --unit-dir) unit_dir=$2; shift 2 ;;
        --no-start) start=0; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "deploy: unknown option $1 (--help)" >&2; exit 2 ;;
    esac
done
case "$init" in supervisor | systemd | none) ;; *) echo "deploy: --init supervisor|systemd|none" >&2; exit 2 ;; esac
case "$processes" in '' | *[!0-9]* | 0) echo "deploy: --processes must be 1 or more" >&2; exit 2 ;; esac
case "$prefix" in /*) ;; *) prefix=$(pwd)/$prefix ;; esac

owner=${user:-$(id -un)}
group=${user:-$(id -gn)}
venv=$prefix/venv
etc=$prefix/etc
aether=$venv/bin/aether
changes=0

say() { printf '%s\n' "$*"; }
# Run a step that changes something, or print it under --dry-run.
change() {
    changes=$((changes + 1))
    if [ "$dry_run" = 1 ]; then say "  would: $*"; else say "  run: $*"; "$@"; fi
}

# A directory with exactly this mode and owner, touched only when it differs.
directory() { # path mode owner group
    local path=$1 mode=$2 o=$3 g=$4
    if [ ! -d "$path" ]; then
        change install -d -m "$mode" -o "$o" -g "$g" "$path"
    elif [ "$(stat -c '%a %U %G' "$path")" != "${mode#0} $o $g" ]; then
        change chmod "$mode" "$path"
        change chown "$o:$g" "$path"
    else
        say "  ok: $path ($mode $o:$g)"
    fi
}

# A file with this content (from a source file), mode and owner, replaced only when it differs.
file() { # source target mode owner group
    local src=$1 dst=$2 mode=$3 o=$4 g=$5
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        if [ "$(stat -c '%a %U %G' "$dst")" != "${mode#0} $o $g" ]; then
            change chmod "$mode" "$dst"
            change chown "$o:$g" "$dst"
        else
            say "  ok: $dst"
        fi
    else
        change install -m "$mode" -o "$o" -g "$g" "$src" "$dst"
    fi
}

# The shipped files name the default prefix /opt/aether: render them for this one.
render() { # template -> stdout
    local escaped
    escaped=$(printf '%s' "$prefix" | sed 's/[&|\\]/\\&/g')
    sed -e "s|/opt/aether|$escaped|g" \
        -e "s|^numprocs=.*|numprocs=$processes|" \
        -e "s|^; user=aether .*|${user:+user=$user}|" \
        -e "s|^User=aether|${user:+User=$user}|" \
        -e "s|^Group=aether|${user:+Group=$user}|" \
        -e "s|^Wants=aether@1.service aether@2.service|Wants=$(for i in $(seq 1 "$processes"); do printf 'aether@%s.service ' "$i"; done)|" \
        "$1"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say "deploy: Aether from $source_dir into $prefix (init: $init, processes: $processes, user: $owner)"
[ "$dry_run" = 1 ] && say "deploy: DRY RUN, nothing is changed"

say "step 1/8: service user"
if [ -z "$user" ]; then
    say "  ok: the current user ($owner)"
elif id -u "$user" >/dev/null 2>&1; then
    say "  ok: $user exists"
else
    change useradd --system --user-group --home-dir "$prefix/data" --no-create-home \
        --shell /usr/sbin/nologin "$user"
fi

say "step 2/8: directories"
directory "$prefix" 0755 "$(id -un)" "$(id -gn)"
directory "$prefix/bin" 0755 "$(id -un)" "$(id -gn)"
# Configuration: written by root (or the deploying user), readable by the service's group.
directory "$etc" 0750 "$(id -un)" "$group"
directory "$prefix/data" 0750 "$owner" "$group"
directory "$prefix/log" 0750 "$owner" "$group"
directory "$prefix/run" 0750 "$owner" "$group"

say "step 3/8: virtualenv"
if [ -x "$venv/bin/python" ]; then
    say "  ok: $venv"
else
    change "$python" -m venv "$venv"
fi

say "step 4/8: Aether package"
# What the venv holds is recorded by a hash of the source: the same source installs nothing.
source_hash=$(cd "$source_dir" && find aether_trio pyproject.toml -type f ! -name '*.pyc' \
    ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
[ "$init" = supervisor ] && source_hash="$source_hash+supervisor"
installed=$(cat "$venv/.aether-source" 2>/dev/null || true)
package_changed=0
if [ "$installed" = "$source_hash" ]; then
    say "  ok: $source_hash installed"
else
    package_changed=1
    extra=""
    [ "$init" = supervisor ] && extra="supervisor>=4.2"
    change "$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade "$source_dir" $extra
    if [ "$dry_run" = 1 ]; then say "  would: record $source_hash in $venv/.aether-source"
    else printf '%s\n' "$source_hash" > "$venv/.aether-source"; fi
fi

say "step 5/8: configuration"
if [ -f "$etc/config.toml" ]; then
    say "  ok: $etc/config.toml kept"
elif [ -n "$config" ]; then
    change install -m 0640 -o "$(id -un)" -g "$group" "$config" "$etc/config.toml"
else
    change "$aether" init "$etc" --data-dir "$prefix/data" --log-dir "$prefix/log" \
        --port "$port" --http-port "$http_port"
fi
# Secrets: readable by the service user only.
if [ -d "$etc/secrets" ]; then
    directory "$etc/secrets" 0700 "$owner" "$group"
    for secret in "$etc"/secrets/*; do
        [ -f "$secret" ] || continue
        if [ "$(stat -c '%a %U' "$secret")" != "600 $owner" ]; then
            change chmod 0600 "$secret"
            change chown "$owner:$group" "$secret"
        fi
    done
elif [ "$dry_run" = 1 ]; then
    say "  would: secrets in $etc/secrets (0700), files 0600, owned by $owner"
fi
if [ "$dry_run" = 0 ] || [ -f "$etc/config.toml" ]; then
    for i in $(seq 1 "$processes"); do
        if [ -x "$aether" ]; then
            "$aether" check-config -c "$etc/config.toml" --instance "$i" | sed 's/^/  /'
        fi
    done
fi

say "step 6/8: health-check script"
file "$source_dir/ops/healthcheck" "$prefix/bin/healthcheck" 0755 "$(id -un)" "$(id -gn)"

say "step 7/8: $init"
units_changed=0
install_rendered() { # template target mode
    render "$1" > "$work/rendered"
    if [ -f "$2" ] && cmp -s "$work/rendered" "$2"; then
        say "  ok: $2"
    else
        units_changed=1
        if [ "$dry_run" = 1 ]; then
            say "  would: write $2 from $1:"
            diff -u "$2" "$work/rendered" 2>/dev/null | sed 's/^/    /' || sed 's/^/    | /' "$work/rendered"
            changes=$((changes + 1))
        else
            change install -m "$3" "$work/rendered" "$2"
        fi
    fi
}
case "$init" in
    supervisor)
        directory "$etc/supervisor.d" 0750 "$(id -un)" "$group"
        install_rendered "$source_dir/ops/supervisor/supervisord.conf" "$etc/supervisord.conf" 0640
        install_rendered "$source_dir/ops/supervisor/aether.conf" "$etc/supervisor.d/aether.conf" 0640
        ;;
    systemd)
        directory "$unit_dir" 0755 "$(id -un)" "$(id -gn)"
        install_rendered "$source_dir/ops/systemd/aether.service" "$unit_dir/aether.service" 0644
        install_rendered "$source_dir/ops/systemd/aether@.service" "$unit_dir/aether@.service" 0644
        install_rendered "$source_dir/ops/systemd/aether.target" "$unit_dir/aether.target" 0644
        ;;
    none) say "  ok: nothing to install" ;;
esac

say "step 8/8: start and verify"
supervisorctl() { "$venv/bin/supervisorctl" -c "$etc/supervisord.conf" "$@"; }
if [ "$start" = 0 ] || [ "$init" = none ]; then
    say "  ok: not started (--no-start or --init none)"
    say "deploy: done, $changes change(s)"
    exit 0
fi
if [ "$init" = supervisor ]; then
    pid=$(cat "$prefix/run/supervisord.pid" 2>/dev/null || true)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        change "$venv/bin/supervisord" -c "$etc/supervisord.conf"
    else
        if [ "$units_changed" = 1 ]; then
            change supervisorctl reread
            change supervisorctl update
        fi
        if [ "$package_changed" = 1 ]; then
            # Graceful: SIGTERM, clients reconnect to their process once it is back (nginx).
            change supervisorctl restart 'aether:*'
        fi
        [ "$units_changed$package_changed" = 00 ] && say "  ok: supervisord $pid runs, nothing to restart"
    fi
else
    if [ "$units_changed" = 1 ]; then change systemctl daemon-reload; fi
    for i in $(seq 1 "$processes"); do
        if systemctl is-active --quiet "aether@$i" 2>/dev/null; then
            if [ "$package_changed" = 1 ]; then change systemctl restart "aether@$i"
            else say "  ok: aether@$i active"; fi
        else
            change systemctl enable --now "aether@$i"
        fi
    done
fi

if [ "$dry_run" = 1 ]; then
    for i in $(seq 1 "$processes"); do say "  would: $prefix/bin/healthcheck --instance $i"; done
    say "deploy: dry run done, $changes step(s) would change something"
    exit 0
fi
status=0
for i in $(seq 1 "$processes"); do
    deadline=$((SECONDS + 30))
    while :; do
        code=0
        answer=$("$prefix/bin/healthcheck" -c "$etc/config.toml" --instance "$i" --timeout 3) || code=$?
        if [ "$code" -le 1 ] || [ "$SECONDS" -ge "$deadline" ]; then break; fi
        sleep 1
    done
    say "  health-check $i: $answer"
    if [ "$code" -ge 2 ]; then status=1; fi
done
if [ "$status" != 0 ]; then
    say "deploy: FAILED: a process is not healthy (logs: $prefix/log/)" >&2
    exit 1
fi
if [ "$changes" = 0 ]; then say "deploy: nothing changed"; else say "deploy: done, $changes change(s)"; fi
