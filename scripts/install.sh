#!/usr/bin/env bash
# Installs sockwarden as a systemd service (docs/operations.md, "Running
# under systemd"):
#
#   sudo scripts/install.sh               build release, install
#   sudo scripts/install.sh --uninstall   stop, detach, remove
#
# Install puts
#   /usr/local/bin/sockwarden                  (0755, built with cargo build --release)
#   /etc/systemd/system/sockwarden.service     (0644, deploy/systemd/sockwarden.service)
#   /etc/sockwarden/config.yaml                (0644, deploy/config.yaml; only if absent)
#   /usr/local/share/man/man1/sockwarden*.1    (0644, sockwarden generate: man sockwarden)
#   /usr/local/share/{bash-completion/completions,zsh/site-functions,fish/vendor_completions.d}/
#                                              (0644, the shell completions)
# and runs `systemctl daemon-reload` when systemd is PID 1 (it is not on
# every machine: containers, these test machines; the script says so). It
# neither enables nor starts the unit.
#
# Uninstall stops the unit (systemd only), runs `sockwarden detach --config
# /etc/sockwarden/config.yaml` (a stop leaves enforcement in place: detach
# is what removes it; if it fails, nothing is removed), then removes the
# binary, the unit, the man pages and completions, and the configuration only while it is still the
# example (an edited one is kept).
#
# Environment:
#   DESTDIR          install under this root instead of / (packaging, tests);
#                    nothing is run against the system: no systemctl, no detach
#   SOCKWARDEN_BIN   install this binary instead of building one
set -euo pipefail
cd "$(dirname "$0")/.."

dest=${DESTDIR:-}
bin=$dest/usr/local/bin/sockwarden
unit=$dest/etc/systemd/system/sockwarden.service
config=$dest/etc/sockwarden/config.yaml
share=$dest/usr/local/share
# The shell completions generated from the command-line definitions
# (`sockwarden generate`; the man pages go to $share/man/man1).
completions=(
  "$share/bash-completion/completions/sockwarden"
  "$share/zsh/site-functions/_sockwarden"
  "$share/fish/vendor_completions.d/sockwarden.fish"
)

say() { echo "install.sh: $*"; }

# systemd is the init system (sd_booted(3)), and we install onto this system.
systemd_here() { [[ -z $dest && -d /run/systemd/system ]]; }

reload_systemd() {
  if [[ -n $dest ]]; then
    say "DESTDIR set: not running systemctl daemon-reload"
  elif systemd_here; then
    systemctl daemon-reload
    say "systemctl daemon-reload done"
  else
    say "systemd is not PID 1 here (no /run/systemd/system): not running systemctl daemon-reload"
  fi
}

install_all() {
  local built=${SOCKWARDEN_BIN:-}
  if [[ -z $built ]]; then
    cargo build --release --locked
    built=target/release/sockwarden
  fi
  install -D -m 0755 "$built" "$bin"
  say "installed $bin"
  install -D -m 0644 deploy/systemd/sockwarden.service "$unit"
  say "installed $unit"
  local gen
  gen=$(mktemp -d)
  "$bin" generate --out "$gen" >/dev/null
  install -d -m 0755 "$share/man/man1"
  install -m 0644 "$gen"/man1/*.1 "$share/man/man1/"
  install -D -m 0644 "$gen/completions/sockwarden.bash" "$share/bash-completion/completions/sockwarden"
  install -D -m 0644 "$gen/completions/_sockwarden" "$share/zsh/site-functions/_sockwarden"
  install -D -m 0644 "$gen/completions/sockwarden.fish" "$share/fish/vendor_completions.d/sockwarden.fish"
  rm -rf "$gen"
  say "installed the man pages (man sockwarden) and the bash, zsh and fish completions under $share"
  if [[ -e $config ]]; then
    say "kept $config (it exists; the example is deploy/config.yaml)"
  else
    install -d -m 0755 "$(dirname "$config")"
    install -m 0644 deploy/config.yaml "$config"
    say "installed $config (the example: edit its policies)"
  fi
  reload_systemd
  say "next: edit $config, check it (sockwarden check --config /etc/sockwarden/config.yaml), then: systemctl enable --now sockwarden"
}

uninstall_all() {
  if systemd_here; then
    systemctl disable --now sockwarden.service || true
  fi
  if [[ -n $dest ]]; then
    say "DESTDIR set: not detaching (the programs of this system are not DESTDIR's)"
  elif [[ ! -x $bin ]]; then
    say "no $bin: nothing to detach with"
  elif [[ -e $config ]]; then
    # A failure (a sockwarden still running, a configuration that does not
    # read) stops the script here, before anything is removed.
    "$bin" detach --config "$config"
  else
    "$bin" detach # the default pin path
  fi
  for f in "$bin" "$unit" "$share/man/man1"/sockwarden*.1 "${completions[@]}"; do
    if [[ -e $f ]]; then
      rm -f "$f"
      say "removed $f"
    fi
  done
  if [[ -e $config ]]; then
    if cmp -s deploy/config.yaml "$config"; then
      rm -f "$config"
      rmdir "$(dirname "$config")" 2>/dev/null || true
      say "removed $config (the unchanged example)"
    else
      say "kept $config (edited since it was installed)"
    fi
  fi
  reload_systemd
}

case ${1:-} in
  "") install_all ;;
  --uninstall) uninstall_all ;;
  *)
    echo "usage: scripts/install.sh [--uninstall] (DESTDIR=, SOCKWARDEN_BIN= in the environment)" >&2
    exit 2
    ;;
esac
