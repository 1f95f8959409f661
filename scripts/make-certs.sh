#!/usr/bin/env bash
# Makes a private CA and certificates for the TLS compose variant
# (docker-compose.tls.yml) with openssl: a server certificate for the `rabbitmq`,
# `postgres`, `status` and `localhost` names, a client certificate, and an API key.
# Writes to certs/ (or $1); an existing folder is left as it is. For trying TLS out;
# in production the certificates come from your own CA.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-certs}
if [ -e "$OUT/ca.pem" ]; then
  echo "$OUT/ca.pem exists; remove $OUT to make new certificates"
  exit 0
fi
# The containers' users (rabbitmq, postgres, nobody) read these through a bind mount,
# whatever this shell's umask.
umask 022
mkdir -p "$OUT"
chmod 755 "$OUT"
cd "$OUT"
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=lastseen example CA" \
  -keyout ca.key -out ca.pem 2>/dev/null
leaf() { # name, extendedKeyUsage, subjectAltName
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$1" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf 'extendedKeyUsage=%s\nsubjectAltName=%s\n' "$2" "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
leaf server serverAuth "DNS:rabbitmq,DNS:postgres,DNS:status,DNS:localhost,IP:127.0.0.1"
leaf client clientAuth "DNS:lastseen"
# The PostgreSQL and RabbitMQ images run as users of their own: they must read the key.
chmod 644 ./*.pem server.key client.key
head -c 24 /dev/urandom | base64 | tr -d '/+=' >api-keys
chmod 644 api-keys
echo "certificates and an API key (api-keys) in $OUT/"
