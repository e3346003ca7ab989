# Stand-ins for the OpenWrt shell environment an init script runs in, so
# net/tandem/files/tandem.init can be exercised here without an SDK or a
# router. POSIX sh (run under dash and busybox ash, like the real thing).
#
# - /lib/functions.sh: config_load reads a UCI file the way the real one
#   does (the UCI text is sourced with `config`, `option` and `list` defined
#   as functions), and config_get, config_get_bool, config_foreach,
#   config_list_foreach keep the real semantics (a list read with
#   config_get is its items joined by spaces; anonymous sections get
#   generated names).
# - /lib/functions/procd.sh: every procd_* call is appended to $PROCD_LOG,
#   one line per call, so a test can read what the script asked procd for.
# - logger: appends to $LOGGER_LOG.
# - /lib/functions/network.sh: network_get_device answers from
#   NETDEV_<network> variables (unset: the network is down).
#
# Inputs (environment): UCI_CONFIG_DIR, PROCD_LOG, LOGGER_LOG.

# --- /lib/functions.sh ------------------------------------------------------

_uci_anon=0

config() { # <type> [name]
	local name="$2"
	if [ -z "$name" ]; then
		_uci_anon=$((_uci_anon + 1))
		name=$(printf 'cfg%02x%04x' "$_uci_anon" "$_uci_anon")
	fi
	CONFIG_SECTION="$name"
	CONFIG_SECTIONS="${CONFIG_SECTIONS:+$CONFIG_SECTIONS }$name"
	eval "CONFIG_${name}_TYPE=\$1"
}

option() { # <name> <value>
	eval "CONFIG_${CONFIG_SECTION}_$1=\$2"
}

list() { # <name> <value>
	local len
	eval "len=\${CONFIG_${CONFIG_SECTION}_$1_LENGTH:-0}"
	len=$((len + 1))
	eval "CONFIG_${CONFIG_SECTION}_$1_ITEM$len=\$2"
	eval "CONFIG_${CONFIG_SECTION}_$1_LENGTH=$len"
	local cur
	eval "cur=\${CONFIG_${CONFIG_SECTION}_$1}"
	eval "CONFIG_${CONFIG_SECTION}_$1=\"\${cur:+\$cur }\$2\""
}

config_load() { # <package>
	local s
	# Forget what a previous load left.
	for s in $CONFIG_SECTIONS; do
		for v in $(set | sed -n "s/^\(CONFIG_${s}_[A-Za-z0-9_]*\)=.*/\1/p"); do
			unset "$v"
		done
	done
	CONFIG_SECTIONS=
	CONFIG_SECTION=
	_uci_anon=0
	[ -f "$UCI_CONFIG_DIR/$1" ] || return 1
	# shellcheck source=/dev/null
	. "$UCI_CONFIG_DIR/$1"
}

config_get() { # <var> <section> <option> [default]
	local _v
	eval "_v=\${CONFIG_${2}_${3}:-}"
	[ -n "$_v" ] || _v="$4"
	eval "$1=\$_v"
}

config_get_bool() { # <var> <section> <option> [default]
	local _b
	config_get _b "$2" "$3" "$4"
	case "$_b" in
	1 | on | true | yes | enabled) _b=1 ;;
	0 | off | false | no | disabled) _b=0 ;;
	*) _b="$4" ;;
	esac
	eval "$1=\$_b"
}

config_foreach() { # <function> [type] [args...]
	local fn="$1" type="$2" s t
	shift
	[ $# -gt 0 ] && shift
	for s in $CONFIG_SECTIONS; do
		eval "t=\$CONFIG_${s}_TYPE"
		[ -z "$type" ] || [ "$t" = "$type" ] || continue
		"$fn" "$s" "$@"
	done
}

config_list_foreach() { # <section> <option> <function> [args...]
	local section="$1" opt="$2" fn="$3" len i v
	shift 3
	eval "len=\${CONFIG_${section}_${opt}_LENGTH:-0}"
	i=1
	while [ "$i" -le "$len" ]; do
		eval "v=\$CONFIG_${section}_${opt}_ITEM$i"
		"$fn" "$v" "$@"
		i=$((i + 1))
	done
}

# --- logger -----------------------------------------------------------------

logger() {
	local prio=user.notice tag=
	while [ $# -gt 0 ]; do
		case "$1" in
		-t) tag="$2"; shift 2 ;;
		-p) prio="$2"; shift 2 ;;
		--) shift; break ;;
		*) break ;;
		esac
	done
	printf '%s %s: %s\n' "$prio" "$tag" "$*" >>"$LOGGER_LOG"
}

# --- procd ------------------------------------------------------------------

_procd() { printf '%s\n' "$*" >>"$PROCD_LOG"; }
procd_open_instance() { _procd "open_instance $*"; }
procd_set_param() { _procd "set_param $*"; }
procd_append_param() { _procd "append_param $*"; }
procd_close_instance() { _procd "close_instance"; }
procd_add_reload_trigger() { _procd "reload_trigger $*"; }
procd_add_reload_interface_trigger() { _procd "interface_trigger $*"; }
procd_open_trigger() { _procd "open_trigger"; }
procd_close_trigger() { _procd "close_trigger"; }

# --- /lib/functions/network.sh ---------------------------------------------

network_get_device() { # <var> <network>
	local _d
	eval "_d=\${NETDEV_$2:-}"
	eval "$1=\$_d"
	[ -n "$_d" ]
}
