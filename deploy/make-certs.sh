#!/usr/bin/env bash
# Make a private CA for one installation of the compose stack, and from it the certificates
# every hop needs: Kafka (server), PostgreSQL (server), the gateway (API server; also the
# workers' operations port), the gateway as a Kafka client, and a Kafka admin client for the
# healthcheck. Keys are EC P-256, never leave this directory, and are readable only by you
# (the tls-init service copies them into volumes, owned by each service's user).
#
# Usage: deploy/make-certs.sh [OUT_DIR]        (default: deploy/certs)
#   GATEWAY_HOSTNAME=gateway.kommune.dk deploy/make-certs.sh   adds the public name to the
#   API certificate. With your organisation's own PKI, put its files under the same names.
set -euo pipefail

out="${1:-$(dirname "$0")/certs}"
days="${CERT_DAYS:-825}"
org="${CERT_ORG:-attest gateway}"
public_name="${GATEWAY_HOSTNAME:-localhost}"
mkdir -p "$out"
umask 077
cd "$out"

if [[ ! -f ca.key ]]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
  openssl req -x509 -new -key ca.key -sha256 -days "$days" -out ca.crt \
    -subj "/O=${org}/OU=installation CA/CN=attest gateway CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

issue() {  # name, subject CN, subjectAltName, extendedKeyUsage
  local name="$1" cn="$2" san="$3" eku="$4"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.key"
  openssl req -new -key "$name.key" -out "$name.csr" -subj "/O=${org}/CN=${cn}"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s\n' \
    "$eku" "${san:+subjectAltName=$san}" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
    -days "$days" -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

issue kafka kafka "DNS:kafka,DNS:localhost" "serverAuth,clientAuth"
issue postgres postgres "DNS:postgres,DNS:localhost" "serverAuth"
issue gateway api "DNS:api,DNS:worker,DNS:tracker,DNS:localhost,IP:127.0.0.1,DNS:${public_name}" "serverAuth"
issue gateway-client gateway "" "clientAuth"
issue kafka-admin kafka-admin "" "clientAuth"

# Kafka reads PEM keystores: the private key (PKCS#8) followed by the certificate chain.
cat kafka.key kafka.crt ca.crt > kafka.pem
cat kafka-admin.key kafka-admin.crt > kafka-admin.pem
cat gateway.crt ca.crt > gateway-chain.crt
chmod 600 ./*.key ./*.pem
chmod 644 ./*.crt
echo "certificates for one installation are in $out (CA: ca.crt; keep ca.key offline)"
