#!/usr/bin/env bash
# Makes a TEST certificate authority for the shelfwatch Mosquitto example: a CA, a broker
# certificate and one client certificate per agent (CN = agent id, which the broker's
# `use_identity_as_username` turns into the MQTT username the ACL matches with %u).
#
#   deploy/mosquitto/make-test-ca.sh OUT_DIR [--host NAME]... [--agent ID]... [--days N]
#
#   --host NAME   a DNS name (or IP address) of the broker, put in its certificate's
#                 subjectAltName; repeat for several. localhost, 127.0.0.1 and ::1 are always
#                 added. Default: broker.local
#   --agent ID    make ID.pem / ID.key for agent ID ([A-Za-z0-9_-], 1-64); repeat for several
#   --days N      validity of the broker and agent certificates (default 825)
#
# OUT_DIR gets: ca.pem ca.key (the CA; reused when present, so running it again with new
# --agent ids adds agents to the same CA), server.pem server.key, <agent>.pem <agent>.key.
# Keys are written with mode 0600: give the broker's key to the `mosquitto` user.
#
# For production use your organisation's PKI; this CA key sits unprotected on disk.
set -euo pipefail

die() { printf 'make-test-ca.sh: error: %s\n' "$*" >&2; exit 1; }
[[ $# -ge 1 && $1 != -* ]] || die "usage: make-test-ca.sh OUT_DIR [--host NAME]... [--agent ID]... [--days N]"
OUT=$1
shift
HOSTS=()
AGENTS=()
DAYS=825
while (($#)); do
  case $1 in
    --host) [[ $# -ge 2 ]] || die "--host needs a name"; HOSTS+=("$2"); shift ;;
    --agent)
      [[ $# -ge 2 ]] || die "--agent needs an id"
      [[ $2 =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "agent id '$2' must be 1-64 of [A-Za-z0-9_-] (it becomes an MQTT topic level)"
      AGENTS+=("$2"); shift ;;
    --days) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || die "--days needs a positive number"; DAYS=$2; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
  shift
done
((${#HOSTS[@]})) || HOSTS=(broker.local)
command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"

mkdir -p "$OUT"
cd "$OUT"
umask 077
KEY_OPTS=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)

if [[ -f ca.key && -f ca.pem ]]; then
  echo "reusing CA $OUT/ca.pem"
else
  openssl req -x509 -new "${KEY_OPTS[@]}" -keyout ca.key -out ca.pem -days 3650 -sha256 \
    -subj "/O=shelfwatch test/CN=shelfwatch test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "made CA $OUT/ca.pem"
fi

# sign NAME CN EXTENSIONS: NAME.key + NAME.pem signed by the CA.
sign() {
  local name=$1 cn=$2 ext=$3
  openssl req -new "${KEY_OPTS[@]}" -keyout "$name.key" -out "$name.csr" -subj "/O=shelfwatch test/CN=$cn" 2>/dev/null
  printf '%s\n' "$ext" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$DAYS" -sha256 \
    -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
  chmod 0644 "$name.pem"
}

san=
for h in "${HOSTS[@]}" localhost 127.0.0.1 ::1; do
  if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+="IP:$h,"; else san+="DNS:$h,"; fi
done
sign server "${HOSTS[0]}" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=${san%,}"
echo "made broker certificate $OUT/server.pem for ${san%,}"

for agent in "${AGENTS[@]}"; do
  sign "$agent" "$agent" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
  echo "made agent certificate $OUT/$agent.pem (CN=$agent)"
done
chmod 0644 ca.pem
