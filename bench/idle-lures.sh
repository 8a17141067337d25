#!/usr/bin/env bash
# Prints campaigns planting N lures for the idle-agent measurement (50 per
# campaign, the limit is 64), selecting agents labelled role=bench.
# usage: idle-lures.sh N > idle.yaml
set -eu
n=${1:?number of lures}
for i in $(seq "$n"); do
    if [ $(((i - 1) % 50)) -eq 0 ]; then
        [ "$i" -gt 1 ] && echo "---"
        echo "kind: Campaign"
        echo "name: bench-idle-$(((i - 1) / 50))"
        echo "selector: {role: bench}"
        echo "lures:"
    fi
    case $((i % 4)) in
        0) echo "  - {template: patient-csv, name: csv-$i, path: '~/idle/$i', params: {rows: '5'}}" ;;
        1) echo "  - {template: hl7-adt, name: adt-$i, path: '~/idle/$i', params: {messages: '1'}}" ;;
        2) echo "  - {template: fhir-bundle, name: fhir-$i, path: '~/idle/$i', params: {patients: '1'}}" ;;
        3) echo "  - {template: patient-csv, name: exp-$i, path: '~/idle/$i', params: {rows: '3'}}" ;;
    esac
done
