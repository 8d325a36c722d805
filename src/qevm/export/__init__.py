"""Outputs built from an open :class:`~qevm.migration.Migration`.

``vmcoreinfo`` recovers and checks a Linux kernel's VMCOREINFO, ``kdump``
writes makedumpfile's kdump-compressed format, ``guestmem`` reads
guest-physical and kernel-virtual memory, ``scan`` finds bytes in RAM.
"""
