"""Kea actions: delete leases, disable/enable DHCP service, resend DDNS, any command.

They reach Kea through ``ctx.kea`` (trapd.kea.client.KeaClients), so the
transport (unix socket, Control Agent, Kea 3 HTTP socket) is a matter of
trapd.yaml, not of the rule. See README.md beside this file.
"""
