# bash completion for wanpin
_wanpin() {
	local cur prev cmds
	cur=${COMP_WORDS[COMP_CWORD]}
	prev=${COMP_WORDS[COMP_CWORD-1]}
	cmds="run check plan status reload explain up down quota event help"
	if [ "$COMP_CWORD" -eq 1 ]; then
		COMPREPLY=($(compgen -W "$cmds" -- "$cur"))
		return
	fi
	case "$prev" in
	--config) COMPREPLY=($(compgen -f -- "$cur")); return ;;
	--hooks-dir|--state-dir) COMPREPLY=($(compgen -d -- "$cur")); return ;;
	--proto) COMPREPLY=($(compgen -W "tcp udp" -- "$cur")); return ;;
	--log-level) COMPREPLY=($(compgen -W "debug info warn error" -- "$cur")); return ;;
	esac
	case "${COMP_WORDS[1]}" in
	run) COMPREPLY=($(compgen -W "--config --log-level --hooks-dir --no-table-owner --metrics-listen --metrics-public --state-dir" -- "$cur")) ;;
	check) COMPREPLY=($(compgen -W "--config --offline" -- "$cur")) ;;
	plan) COMPREPLY=($(compgen -W "--config --all-up" -- "$cur")) ;;
	status) COMPREPLY=($(compgen -W "--json" -- "$cur")) ;;
	explain) COMPREPLY=($(compgen -W "--config --src --dst --proto --sport --dport --uid --gid --service --mark --iif --json" -- "$cur")) ;;
	up|down)
		local names
		names=$(sed -n 's/^[[:space:]]*name[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' /etc/wanpin/wanpin.toml 2>/dev/null)
		COMPREPLY=($(compgen -W "$names" -- "$cur")) ;;
	quota)
		if [ "$COMP_CWORD" -eq 2 ]; then COMPREPLY=($(compgen -W "reset set" -- "$cur"));
		elif [ "$COMP_CWORD" -eq 3 ]; then
			local names
			names=$(sed -n 's/^[[:space:]]*name[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' /etc/wanpin/wanpin.toml 2>/dev/null)
			COMPREPLY=($(compgen -W "$names" -- "$cur"))
		fi ;;
	event)
		if [ "$COMP_CWORD" -eq 2 ]; then COMPREPLY=($(compgen -W "up down lease lease-lost" -- "$cur"));
		else case "${COMP_WORDS[2]}" in
			up|down) COMPREPLY=($(compgen -W "--local --peer --dns" -- "$cur")) ;;
			*) COMPREPLY=($(compgen -W "--family --address --gateway --dns --client --runtime-dir" -- "$cur")) ;;
		esac; fi ;;
	esac
}
complete -F _wanpin wanpin
