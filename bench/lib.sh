# Shell functions the bench scripts share: `. "$(dirname "$0")/lib.sh"`.

# is_leader SYNOD ENDPOINT [CLIENT-FLAGS...]: whether the member at ENDPOINT leads its cluster
# (asked with `synod endpoint status`, which etcd answers too).
is_leader() {
  local synod="$1" endpoint="$2"
  shift 2
  "$synod" --endpoints "$endpoint" "$@" -w json endpoint status 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
s = (d[0] if isinstance(d, list) else d)["Status"]
sys.exit(0 if str(s["leader"]) == str(s["header"]["member_id"]) else 1)' 2>/dev/null
}

# leader_first SYNOD ENDPOINTS [CLIENT-FLAGS...]: ENDPOINTS (comma-separated) with the leader's
# first, so a single client talks to the leader in either system (as it is unchanged when no
# member answers as leader).
leader_first() {
  local synod="$1" endpoints="$2" endpoint leader="" rest=""
  shift 2
  local list
  IFS=, read -r -a list <<<"$endpoints"
  for endpoint in "${list[@]}"; do
    if [ -z "$leader" ] && is_leader "$synod" "$endpoint" "$@"; then
      leader="$endpoint"
    else
      rest="${rest:+$rest,}$endpoint"
    fi
  done
  echo "${leader:+$leader${rest:+,}}$rest"
}
