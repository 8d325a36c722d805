"""Arm CPUs: the ``cpu`` VMSD of target/arm (``vmstate_arm_cpu``).

The general registers are fields (``env.xregs``, ``env.regs``, ``env.pc``),
PSTATE/CPSR is the opaque ``cpsr`` field (``put_cpsr``: big-endian 32 bits,
replaced by the 64-bit ``cpu/pstate64`` subsection when the upper half is
set) and the system registers travel as two parallel arrays,
``cpreg_vmstate_indexes`` (KVM-style 64-bit register ids) and
``cpreg_vmstate_values``.  Registers QEMU keeps as aliases of other state
(ELR_ELx, SPSR_ELx, SP_ELx) are not in that list; they come from
``env.elr_el``, ``env.banked_spsr`` and ``env.sp_el``.

With SVE, ``z0``..``z31``, ``p0``..``p15`` and ``ffr`` hold the whole
registers as little-endian integers (``cpu/vfp`` and ``cpu/sve``); they are
left out of the text output.

The architecture is ``aarch64`` when the CPU has AArch64 system registers,
``arm`` otherwise.  A CPU executing in AArch32 state has ``r0``..``r15`` and
``cpsr`` instead of ``x0``..``x30``, ``sp`` and ``pstate``.
"""

from __future__ import annotations

from typing import Any

from .base import Arch, CpuSection, be_int, field_index, grid, register, unsigned

# KVM register id layout (linux/arch/arm64/include/uapi/asm/kvm.h).
REG_ARCH_MASK = 0xFF00_0000_0000_0000
REG_ARM64 = 0x6000_0000_0000_0000
REG_ARM = 0x4000_0000_0000_0000
REG_SIZE_MASK = 0x00F0_0000_0000_0000
REG_SIZE_U64 = 0x0030_0000_0000_0000
COPROC_MASK = 0x0FFF_0000
COPROC_SHIFT = 16
ARM64_SYSREG = 0x0013
#: AArch32 entries keep the hashtable's non-secure bit (cpregs.h CP_REG_AA32_NS).
AA32_NS = 1 << 29

PSTATE_SP = 1
PSTATE_NRW = 1 << 4
#: banked_spsr index of SPSR_EL1/2/3 (aarch64_banked_spsr_index: SVC, HYP, MON).
_SPSR_BANK = {1: 1, 2: 6, 3: 7}
#: FPSCR bits that belong to the FPSR and to the FPCR (cpu.h FPSCR_FPSR_MASK/FPCR_MASK).
FPSCR_FPSR_MASK = 0xF800_009F
FPSCR_FPCR_MASK = 0x07FF_9F00

_SYSREGS: dict[tuple[int, int, int, int, int], str] = {
    # op0 3, op1 0: EL1 and identification
    (3, 0, 0, 0, 0): "MIDR_EL1",
    (3, 0, 0, 0, 5): "MPIDR_EL1",
    (3, 0, 0, 0, 6): "REVIDR_EL1",
    (3, 0, 0, 1, 0): "ID_PFR0_EL1",
    (3, 0, 0, 1, 1): "ID_PFR1_EL1",
    (3, 0, 0, 1, 2): "ID_DFR0_EL1",
    (3, 0, 0, 1, 3): "ID_AFR0_EL1",
    (3, 0, 0, 1, 4): "ID_MMFR0_EL1",
    (3, 0, 0, 1, 5): "ID_MMFR1_EL1",
    (3, 0, 0, 1, 6): "ID_MMFR2_EL1",
    (3, 0, 0, 1, 7): "ID_MMFR3_EL1",
    (3, 0, 0, 2, 0): "ID_ISAR0_EL1",
    (3, 0, 0, 2, 1): "ID_ISAR1_EL1",
    (3, 0, 0, 2, 2): "ID_ISAR2_EL1",
    (3, 0, 0, 2, 3): "ID_ISAR3_EL1",
    (3, 0, 0, 2, 4): "ID_ISAR4_EL1",
    (3, 0, 0, 2, 5): "ID_ISAR5_EL1",
    (3, 0, 0, 2, 6): "ID_MMFR4_EL1",
    (3, 0, 0, 2, 7): "ID_ISAR6_EL1",
    (3, 0, 0, 3, 0): "MVFR0_EL1",
    (3, 0, 0, 3, 1): "MVFR1_EL1",
    (3, 0, 0, 3, 2): "MVFR2_EL1",
    (3, 0, 0, 3, 4): "ID_PFR2_EL1",
    (3, 0, 0, 3, 5): "ID_DFR1_EL1",
    (3, 0, 0, 3, 6): "ID_MMFR5_EL1",
    (3, 0, 0, 4, 0): "ID_AA64PFR0_EL1",
    (3, 0, 0, 4, 1): "ID_AA64PFR1_EL1",
    (3, 0, 0, 4, 2): "ID_AA64PFR2_EL1",
    (3, 0, 0, 4, 4): "ID_AA64ZFR0_EL1",
    (3, 0, 0, 4, 5): "ID_AA64SMFR0_EL1",
    (3, 0, 0, 4, 7): "ID_AA64FPFR0_EL1",
    (3, 0, 0, 5, 0): "ID_AA64DFR0_EL1",
    (3, 0, 0, 5, 1): "ID_AA64DFR1_EL1",
    (3, 0, 0, 5, 4): "ID_AA64AFR0_EL1",
    (3, 0, 0, 5, 5): "ID_AA64AFR1_EL1",
    (3, 0, 0, 6, 0): "ID_AA64ISAR0_EL1",
    (3, 0, 0, 6, 1): "ID_AA64ISAR1_EL1",
    (3, 0, 0, 6, 2): "ID_AA64ISAR2_EL1",
    (3, 0, 0, 6, 3): "ID_AA64ISAR3_EL1",
    (3, 0, 0, 7, 0): "ID_AA64MMFR0_EL1",
    (3, 0, 0, 7, 1): "ID_AA64MMFR1_EL1",
    (3, 0, 0, 7, 2): "ID_AA64MMFR2_EL1",
    (3, 0, 0, 7, 3): "ID_AA64MMFR3_EL1",
    (3, 0, 0, 7, 4): "ID_AA64MMFR4_EL1",
    (3, 0, 1, 0, 0): "SCTLR_EL1",
    (3, 0, 1, 0, 1): "ACTLR_EL1",
    (3, 0, 1, 0, 2): "CPACR_EL1",
    (3, 0, 1, 0, 3): "SCTLR2_EL1",
    (3, 0, 1, 2, 0): "ZCR_EL1",
    (3, 0, 1, 2, 1): "TRFCR_EL1",
    (3, 0, 1, 2, 4): "SMPRI_EL1",
    (3, 0, 1, 2, 6): "SMCR_EL1",
    (3, 0, 2, 0, 0): "TTBR0_EL1",
    (3, 0, 2, 0, 1): "TTBR1_EL1",
    (3, 0, 2, 0, 2): "TCR_EL1",
    (3, 0, 2, 0, 3): "TCR2_EL1",
    (3, 0, 2, 1, 0): "APIAKEYLO_EL1",
    (3, 0, 2, 1, 1): "APIAKEYHI_EL1",
    (3, 0, 2, 1, 2): "APIBKEYLO_EL1",
    (3, 0, 2, 1, 3): "APIBKEYHI_EL1",
    (3, 0, 2, 2, 0): "APDAKEYLO_EL1",
    (3, 0, 2, 2, 1): "APDAKEYHI_EL1",
    (3, 0, 2, 2, 2): "APDBKEYLO_EL1",
    (3, 0, 2, 2, 3): "APDBKEYHI_EL1",
    (3, 0, 2, 3, 0): "APGAKEYLO_EL1",
    (3, 0, 2, 3, 1): "APGAKEYHI_EL1",
    (3, 0, 2, 5, 0): "GCSCR_EL1",
    (3, 0, 2, 5, 1): "GCSPR_EL1",
    (3, 0, 2, 5, 2): "GCSCRE0_EL1",
    (3, 0, 4, 0, 0): "SPSR_EL1",
    (3, 0, 4, 0, 1): "ELR_EL1",
    (3, 0, 4, 1, 0): "SP_EL0",
    (3, 0, 4, 2, 0): "SPSEL",
    (3, 0, 4, 2, 2): "CURRENTEL",
    (3, 0, 4, 2, 3): "PAN",
    (3, 0, 4, 2, 4): "UAO",
    (3, 0, 4, 6, 0): "ICC_PMR_EL1",
    (3, 0, 5, 1, 0): "AFSR0_EL1",
    (3, 0, 5, 1, 1): "AFSR1_EL1",
    (3, 0, 5, 2, 0): "ESR_EL1",
    (3, 0, 5, 3, 0): "ERRIDR_EL1",
    (3, 0, 5, 3, 1): "ERRSELR_EL1",
    (3, 0, 6, 0, 0): "FAR_EL1",
    (3, 0, 7, 4, 0): "PAR_EL1",
    (3, 0, 9, 14, 1): "PMINTENSET_EL1",
    (3, 0, 9, 14, 2): "PMINTENCLR_EL1",
    (3, 0, 9, 14, 6): "PMMIR_EL1",
    (3, 0, 10, 2, 0): "MAIR_EL1",
    (3, 0, 10, 2, 2): "PIRE0_EL1",
    (3, 0, 10, 2, 3): "PIR_EL1",
    (3, 0, 10, 2, 4): "POR_EL1",
    (3, 0, 10, 3, 0): "AMAIR_EL1",
    (3, 0, 10, 4, 0): "LORSA_EL1",
    (3, 0, 10, 4, 1): "LOREA_EL1",
    (3, 0, 10, 4, 2): "LORN_EL1",
    (3, 0, 10, 4, 3): "LORC_EL1",
    (3, 0, 10, 4, 7): "LORID_EL1",
    (3, 0, 10, 5, 0): "MPAM1_EL1",
    (3, 0, 12, 0, 0): "VBAR_EL1",
    (3, 0, 12, 0, 1): "RVBAR_EL1",
    (3, 0, 12, 0, 2): "RMR_EL1",
    (3, 0, 12, 1, 0): "ISR_EL1",
    (3, 0, 12, 1, 1): "DISR_EL1",
    (3, 0, 13, 0, 1): "CONTEXTIDR_EL1",
    (3, 0, 13, 0, 4): "TPIDR_EL1",
    (3, 0, 13, 0, 5): "ACCDATA_EL1",
    (3, 0, 13, 0, 7): "SCXTNUM_EL1",
    (3, 0, 14, 1, 0): "CNTKCTL_EL1",
    (3, 1, 0, 0, 0): "CCSIDR_EL1",
    (3, 1, 0, 0, 1): "CLIDR_EL1",
    (3, 1, 0, 0, 2): "CCSIDR2_EL1",
    (3, 1, 0, 0, 4): "GMID_EL1",
    (3, 1, 0, 0, 7): "AIDR_EL1",
    (3, 2, 0, 0, 0): "CSSELR_EL1",
    # op1 3: EL0
    (3, 3, 0, 0, 1): "CTR_EL0",
    (3, 3, 0, 0, 7): "DCZID_EL0",
    (3, 3, 2, 4, 0): "RNDR",
    (3, 3, 2, 4, 1): "RNDRRS",
    (3, 3, 2, 5, 1): "GCSPR_EL0",
    (3, 3, 4, 2, 0): "NZCV",
    (3, 3, 4, 2, 1): "DAIF",
    (3, 3, 4, 2, 2): "SVCR",
    (3, 3, 4, 2, 5): "DIT",
    (3, 3, 4, 2, 6): "SSBS",
    (3, 3, 4, 2, 7): "TCO",
    (3, 3, 4, 4, 0): "FPCR",
    (3, 3, 4, 4, 1): "FPSR",
    (3, 3, 4, 4, 2): "FPMR",
    (3, 3, 4, 5, 0): "DSPSR_EL0",
    (3, 3, 4, 5, 1): "DLR_EL0",
    (3, 3, 9, 12, 0): "PMCR_EL0",
    (3, 3, 9, 12, 1): "PMCNTENSET_EL0",
    (3, 3, 9, 12, 2): "PMCNTENCLR_EL0",
    (3, 3, 9, 12, 3): "PMOVSCLR_EL0",
    (3, 3, 9, 12, 4): "PMSWINC_EL0",
    (3, 3, 9, 12, 5): "PMSELR_EL0",
    (3, 3, 9, 12, 6): "PMCEID0_EL0",
    (3, 3, 9, 12, 7): "PMCEID1_EL0",
    (3, 3, 9, 13, 0): "PMCCNTR_EL0",
    (3, 3, 9, 13, 1): "PMXEVTYPER_EL0",
    (3, 3, 9, 13, 2): "PMXEVCNTR_EL0",
    (3, 3, 9, 14, 0): "PMUSERENR_EL0",
    (3, 3, 9, 14, 3): "PMOVSSET_EL0",
    (3, 3, 13, 0, 2): "TPIDR_EL0",
    (3, 3, 13, 0, 3): "TPIDRRO_EL0",
    (3, 3, 13, 0, 5): "TPIDR2_EL0",
    (3, 3, 13, 0, 7): "SCXTNUM_EL0",
    (3, 3, 14, 0, 0): "CNTFRQ_EL0",
    (3, 3, 14, 0, 1): "CNTPCT_EL0",
    (3, 3, 14, 0, 2): "CNTVCT_EL0",
    (3, 3, 14, 0, 5): "CNTPCTSS_EL0",
    (3, 3, 14, 0, 6): "CNTVCTSS_EL0",
    (3, 3, 14, 2, 0): "CNTP_TVAL_EL0",
    (3, 3, 14, 2, 1): "CNTP_CTL_EL0",
    (3, 3, 14, 2, 2): "CNTP_CVAL_EL0",
    (3, 3, 14, 3, 0): "CNTV_TVAL_EL0",
    (3, 3, 14, 3, 1): "CNTV_CTL_EL0",
    (3, 3, 14, 3, 2): "CNTV_CVAL_EL0",
    (3, 3, 14, 15, 7): "PMCCFILTR_EL0",
    # op1 4: EL2
    (3, 4, 0, 0, 0): "VPIDR_EL2",
    (3, 4, 0, 0, 5): "VMPIDR_EL2",
    (3, 4, 1, 0, 0): "SCTLR_EL2",
    (3, 4, 1, 0, 1): "ACTLR_EL2",
    (3, 4, 1, 0, 3): "SCTLR2_EL2",
    (3, 4, 1, 1, 0): "HCR_EL2",
    (3, 4, 1, 1, 1): "MDCR_EL2",
    (3, 4, 1, 1, 2): "CPTR_EL2",
    (3, 4, 1, 1, 3): "HSTR_EL2",
    (3, 4, 1, 1, 4): "HFGRTR_EL2",
    (3, 4, 1, 1, 5): "HFGWTR_EL2",
    (3, 4, 1, 1, 6): "HFGITR_EL2",
    (3, 4, 1, 1, 7): "HACR_EL2",
    (3, 4, 1, 2, 0): "ZCR_EL2",
    (3, 4, 1, 2, 1): "TRFCR_EL2",
    (3, 4, 1, 2, 2): "HCRX_EL2",
    (3, 4, 1, 2, 5): "SMPRIMAP_EL2",
    (3, 4, 1, 2, 6): "SMCR_EL2",
    (3, 4, 2, 0, 0): "TTBR0_EL2",
    (3, 4, 2, 0, 1): "TTBR1_EL2",
    (3, 4, 2, 0, 2): "TCR_EL2",
    (3, 4, 2, 0, 3): "TCR2_EL2",
    (3, 4, 2, 1, 0): "VTTBR_EL2",
    (3, 4, 2, 1, 2): "VTCR_EL2",
    (3, 4, 2, 2, 0): "VNCR_EL2",
    (3, 4, 2, 5, 0): "GCSCR_EL2",
    (3, 4, 2, 5, 1): "GCSPR_EL2",
    (3, 4, 2, 6, 0): "VSTTBR_EL2",
    (3, 4, 2, 6, 2): "VSTCR_EL2",
    (3, 4, 3, 0, 0): "DACR32_EL2",
    (3, 4, 3, 1, 4): "HDFGRTR_EL2",
    (3, 4, 3, 1, 5): "HDFGWTR_EL2",
    (3, 4, 3, 1, 6): "HAFGRTR_EL2",
    (3, 4, 4, 0, 0): "SPSR_EL2",
    (3, 4, 4, 0, 1): "ELR_EL2",
    (3, 4, 4, 1, 0): "SP_EL1",
    (3, 4, 4, 3, 0): "SPSR_IRQ",
    (3, 4, 4, 3, 1): "SPSR_ABT",
    (3, 4, 4, 3, 2): "SPSR_UND",
    (3, 4, 4, 3, 3): "SPSR_FIQ",
    (3, 4, 5, 0, 1): "IFSR32_EL2",
    (3, 4, 5, 1, 0): "AFSR0_EL2",
    (3, 4, 5, 1, 1): "AFSR1_EL2",
    (3, 4, 5, 2, 0): "ESR_EL2",
    (3, 4, 5, 2, 3): "VSESR_EL2",
    (3, 4, 5, 3, 0): "FPEXC32_EL2",
    (3, 4, 6, 0, 0): "FAR_EL2",
    (3, 4, 6, 0, 4): "HPFAR_EL2",
    (3, 4, 10, 2, 0): "MAIR_EL2",
    (3, 4, 10, 2, 2): "PIRE0_EL2",
    (3, 4, 10, 2, 3): "PIR_EL2",
    (3, 4, 10, 2, 4): "POR_EL2",
    (3, 4, 10, 3, 0): "AMAIR_EL2",
    (3, 4, 10, 5, 0): "MPAM2_EL2",
    (3, 4, 12, 0, 0): "VBAR_EL2",
    (3, 4, 12, 0, 1): "RVBAR_EL2",
    (3, 4, 12, 0, 2): "RMR_EL2",
    (3, 4, 12, 1, 1): "VDISR_EL2",
    (3, 4, 12, 9, 5): "ICC_SRE_EL2",
    (3, 4, 12, 11, 0): "ICH_HCR_EL2",
    (3, 4, 12, 11, 1): "ICH_VTR_EL2",
    (3, 4, 12, 11, 7): "ICH_VMCR_EL2",
    (3, 4, 13, 0, 1): "CONTEXTIDR_EL2",
    (3, 4, 13, 0, 2): "TPIDR_EL2",
    (3, 4, 13, 0, 7): "SCXTNUM_EL2",
    (3, 4, 14, 0, 3): "CNTVOFF_EL2",
    (3, 4, 14, 0, 6): "CNTPOFF_EL2",
    (3, 4, 14, 1, 0): "CNTHCTL_EL2",
    (3, 4, 14, 2, 0): "CNTHP_TVAL_EL2",
    (3, 4, 14, 2, 1): "CNTHP_CTL_EL2",
    (3, 4, 14, 2, 2): "CNTHP_CVAL_EL2",
    (3, 4, 14, 3, 0): "CNTHV_TVAL_EL2",
    (3, 4, 14, 3, 1): "CNTHV_CTL_EL2",
    (3, 4, 14, 3, 2): "CNTHV_CVAL_EL2",
    (3, 4, 14, 4, 0): "CNTHVS_TVAL_EL2",
    (3, 4, 14, 4, 1): "CNTHVS_CTL_EL2",
    (3, 4, 14, 4, 2): "CNTHVS_CVAL_EL2",
    (3, 4, 14, 5, 0): "CNTHPS_TVAL_EL2",
    (3, 4, 14, 5, 1): "CNTHPS_CTL_EL2",
    (3, 4, 14, 5, 2): "CNTHPS_CVAL_EL2",
    # op1 6: EL3
    (3, 6, 1, 0, 0): "SCTLR_EL3",
    (3, 6, 1, 0, 1): "ACTLR_EL3",
    (3, 6, 1, 0, 3): "SCTLR2_EL3",
    (3, 6, 1, 1, 0): "SCR_EL3",
    (3, 6, 1, 1, 1): "SDER32_EL3",
    (3, 6, 1, 1, 2): "CPTR_EL3",
    (3, 6, 1, 2, 0): "ZCR_EL3",
    (3, 6, 1, 2, 6): "SMCR_EL3",
    (3, 6, 1, 3, 1): "MDCR_EL3",
    (3, 6, 2, 0, 0): "TTBR0_EL3",
    (3, 6, 2, 0, 2): "TCR_EL3",
    (3, 6, 2, 1, 4): "GPTBR_EL3",
    (3, 6, 2, 1, 6): "GPCCR_EL3",
    (3, 6, 2, 5, 0): "GCSCR_EL3",
    (3, 6, 2, 5, 1): "GCSPR_EL3",
    (3, 6, 4, 0, 0): "SPSR_EL3",
    (3, 6, 4, 0, 1): "ELR_EL3",
    (3, 6, 4, 1, 0): "SP_EL2",
    (3, 6, 5, 1, 0): "AFSR0_EL3",
    (3, 6, 5, 1, 1): "AFSR1_EL3",
    (3, 6, 5, 2, 0): "ESR_EL3",
    (3, 6, 6, 0, 0): "FAR_EL3",
    (3, 6, 6, 0, 5): "MFAR_EL3",
    (3, 6, 10, 2, 0): "MAIR_EL3",
    (3, 6, 10, 2, 3): "PIR_EL3",
    (3, 6, 10, 2, 4): "POR_EL3",
    (3, 6, 10, 3, 0): "AMAIR_EL3",
    (3, 6, 10, 5, 0): "MPAM3_EL3",
    (3, 6, 12, 0, 0): "VBAR_EL3",
    (3, 6, 12, 0, 1): "RVBAR_EL3",
    (3, 6, 12, 0, 2): "RMR_EL3",
    (3, 6, 12, 12, 4): "ICC_CTLR_EL3",
    (3, 6, 12, 12, 5): "ICC_SRE_EL3",
    (3, 6, 12, 12, 7): "ICC_IGRPEN1_EL3",
    (3, 6, 13, 0, 2): "TPIDR_EL3",
    (3, 6, 13, 0, 7): "SCXTNUM_EL3",
    (3, 7, 14, 2, 0): "CNTPS_TVAL_EL1",
    (3, 7, 14, 2, 1): "CNTPS_CTL_EL1",
    (3, 7, 14, 2, 2): "CNTPS_CVAL_EL1",
    # op0 2: debug
    (2, 0, 0, 0, 2): "OSDTRRX_EL1",
    (2, 0, 0, 2, 0): "MDCCINT_EL1",
    (2, 0, 0, 2, 2): "MDSCR_EL1",
    (2, 0, 0, 3, 2): "OSDTRTX_EL1",
    (2, 0, 0, 6, 2): "OSECCR_EL1",
    (2, 0, 1, 0, 0): "MDRAR_EL1",
    (2, 0, 1, 0, 4): "OSLAR_EL1",
    (2, 0, 1, 1, 4): "OSLSR_EL1",
    (2, 0, 1, 3, 4): "OSDLR_EL1",
    (2, 0, 1, 4, 4): "DBGPRCR_EL1",
    (2, 0, 7, 8, 6): "DBGCLAIMSET_EL1",
    (2, 0, 7, 9, 6): "DBGCLAIMCLR_EL1",
    (2, 0, 7, 14, 6): "DBGAUTHSTATUS_EL1",
    (2, 3, 0, 1, 0): "MDCCSR_EL0",
    (2, 3, 0, 4, 0): "DBGDTR_EL0",
    (2, 3, 0, 5, 0): "DBGDTRRX_EL0",
    (2, 4, 0, 7, 0): "DBGVCR32_EL2",
}
for _n in range(16):
    _SYSREGS[(2, 0, 0, _n, 4)] = f"DBGBVR{_n}_EL1"
    _SYSREGS[(2, 0, 0, _n, 5)] = f"DBGBCR{_n}_EL1"
    _SYSREGS[(2, 0, 0, _n, 6)] = f"DBGWVR{_n}_EL1"
    _SYSREGS[(2, 0, 0, _n, 7)] = f"DBGWCR{_n}_EL1"
for _n in range(31):
    _SYSREGS[(3, 3, 14, 8 + (_n >> 3), _n & 7)] = f"PMEVCNTR{_n}_EL0"
    _SYSREGS[(3, 3, 14, 12 + (_n >> 3), _n & 7)] = f"PMEVTYPER{_n}_EL0"
for _n in range(4):
    _SYSREGS[(3, 4, 12, 8, _n)] = f"ICH_AP0R{_n}_EL2"
    _SYSREGS[(3, 4, 12, 9, _n)] = f"ICH_AP1R{_n}_EL2"
for _n in range(16):
    _SYSREGS[(3, 4, 12, 12 + (_n >> 3), _n & 7)] = f"ICH_LR{_n}_EL2"

#: AArch32 coprocessor registers, (cp, opc1, crn, crm, opc2) -> name (MRC/MCR).
_AA32: dict[tuple[int, int, int, int, int], str] = {
    (15, 0, 0, 0, 0): "MIDR",
    (15, 0, 0, 0, 1): "CTR",
    (15, 0, 0, 0, 5): "MPIDR",
    (15, 1, 0, 0, 0): "CCSIDR",
    (15, 1, 0, 0, 1): "CLIDR",
    (15, 2, 0, 0, 0): "CSSELR",
    (15, 0, 1, 0, 0): "SCTLR",
    (15, 0, 1, 0, 1): "ACTLR",
    (15, 0, 1, 0, 2): "CPACR",
    (15, 0, 1, 1, 0): "SCR",
    (15, 0, 1, 1, 1): "SDER",
    (15, 0, 1, 1, 2): "NSACR",
    (15, 0, 2, 0, 0): "TTBR0",
    (15, 0, 2, 0, 1): "TTBR1",
    (15, 0, 2, 0, 2): "TTBCR",
    (15, 0, 3, 0, 0): "DACR",
    (15, 0, 5, 0, 0): "DFSR",
    (15, 0, 5, 0, 1): "IFSR",
    (15, 0, 5, 1, 0): "ADFSR",
    (15, 0, 5, 1, 1): "AIFSR",
    (15, 0, 6, 0, 0): "DFAR",
    (15, 0, 6, 0, 2): "IFAR",
    (15, 0, 7, 4, 0): "PAR",
    (15, 0, 10, 2, 0): "PRRR",
    (15, 0, 10, 2, 1): "NMRR",
    (15, 0, 10, 3, 0): "AMAIR0",
    (15, 0, 10, 3, 1): "AMAIR1",
    (15, 0, 12, 0, 0): "VBAR",
    (15, 0, 12, 0, 1): "MVBAR",
    (15, 0, 13, 0, 0): "FCSEIDR",
    (15, 0, 13, 0, 1): "CONTEXTIDR",
    (15, 0, 13, 0, 2): "TPIDRURW",
    (15, 0, 13, 0, 3): "TPIDRURO",
    (15, 0, 13, 0, 4): "TPIDRPRW",
    (15, 0, 14, 0, 0): "CNTFRQ",
    (15, 0, 14, 1, 0): "CNTKCTL",
    (15, 0, 14, 2, 0): "CNTP_TVAL",
    (15, 0, 14, 2, 1): "CNTP_CTL",
    (15, 0, 14, 3, 0): "CNTV_TVAL",
    (15, 0, 14, 3, 1): "CNTV_CTL",
    (14, 0, 0, 0, 0): "DBGDIDR",
    (14, 0, 0, 1, 0): "DBGDSCRint",
    (14, 0, 0, 2, 0): "DBGDCCINT",
    (14, 0, 0, 2, 2): "DBGDSCRext",
    (14, 0, 0, 6, 2): "DBGOSECCR",
    (14, 0, 0, 7, 0): "DBGVCR",
    (14, 0, 1, 0, 0): "DBGDRAR",
    (14, 0, 1, 0, 4): "DBGOSLAR",
    (14, 0, 1, 1, 4): "DBGOSLSR",
    (14, 0, 1, 3, 4): "DBGOSDLR",
    (14, 0, 1, 4, 4): "DBGPRCR",
    (14, 0, 2, 0, 0): "DBGDSAR",
    (14, 0, 7, 0, 7): "DBGDEVID2",
    (14, 0, 7, 1, 7): "DBGDEVID1",
    (14, 0, 7, 2, 7): "DBGDEVID",
    (14, 0, 7, 8, 6): "DBGCLAIMSET",
    (14, 0, 7, 9, 6): "DBGCLAIMCLR",
    (14, 0, 7, 14, 6): "DBGAUTHSTATUS",
    (14, 7, 0, 0, 0): "JIDR",
}
for _n in range(16):
    _AA32[(14, 0, 0, _n, 4)] = f"DBGBVR{_n}"
    _AA32[(14, 0, 0, _n, 5)] = f"DBGBCR{_n}"
    _AA32[(14, 0, 0, _n, 6)] = f"DBGWVR{_n}"
    _AA32[(14, 0, 0, _n, 7)] = f"DBGWCR{_n}"
    _AA32[(14, 0, 1, _n, 1)] = f"DBGBXVR{_n}"
#: AArch32 64-bit registers (MRRC/MCRR), (cp, opc1, crm) -> name.
_AA32_64: dict[tuple[int, int, int], str] = {
    (15, 0, 2): "TTBR0_64",
    (15, 1, 2): "TTBR1_64",
    (15, 0, 7): "PAR_64",
    (15, 0, 14): "CNTPCT",
    (15, 1, 14): "CNTVCT",
    (15, 2, 14): "CNTP_CVAL",
    (15, 3, 14): "CNTV_CVAL",
    (15, 4, 14): "CNTVOFF",
    (14, 0, 1): "DBGDRAR_64",
    (14, 0, 2): "DBGDSAR_64",
}


def sysreg_name(kvm_id: int) -> str:
    """The name of the system register with KVM-style id ``kvm_id``.

    AArch64 registers without a well-known name are ``S<op0>_<op1>_C<crn>_C<crm>_<op2>``;
    AArch32 ones ``p<cp>_<opc1>_c<crn>_c<crm>_<opc2>`` (64-bit: ``p<cp>_<opc1>_c<crm>_64``),
    with ``_S`` for the Secure bank.
    """
    low = kvm_id & 0xFFFF_FFFF
    if kvm_id & REG_ARCH_MASK == REG_ARM64:
        if (low & COPROC_MASK) >> COPROC_SHIFT != ARM64_SYSREG:
            return f"KVM_{kvm_id:#x}"
        enc = (
            (low >> 14) & 3,
            (low >> 11) & 7,
            (low >> 7) & 15,
            (low >> 3) & 15,
            low & 7,
        )
        return _SYSREGS.get(enc, "S{}_{}_C{}_C{}_{}".format(*enc))
    cp = (low & COPROC_MASK) >> COPROC_SHIFT
    crn, crm, opc1, opc2 = (low >> 11) & 15, (low >> 7) & 15, (low >> 3) & 15, low & 7
    bank = "" if low & AA32_NS else "_S"
    if kvm_id & REG_SIZE_MASK == REG_SIZE_U64:
        known = _AA32_64.get((cp, opc1, crm))
        return (known or f"p{cp}_{opc1}_c{crm}_64") + bank
    known = _AA32.get((cp, opc1, crn, crm, opc2))
    return (known or f"p{cp}_{opc1}_c{crn}_c{crm}_{opc2}") + bank


def _cpregs(f: dict[str, Any]) -> list[tuple[int, int]]:
    ids = f.get("cpreg_vmstate_indexes") or []
    vals = f.get("cpreg_vmstate_values") or []
    return [(unsigned(int(i)), unsigned(int(v))) for i, v in zip(ids, vals)]


def _detect(cpu: CpuSection) -> str | None:
    st = cpu.state
    if st.field("cpsr") is None or st.field("env.xregs") is None:
        return None
    f = field_index(st)
    has_a64 = any(i & REG_ARCH_MASK == REG_ARM64 for i, _ in _cpregs(f))
    return "aarch64" if has_a64 else "arm"


def _pstate(f: dict[str, Any]) -> int:
    # put_cpsr writes the low 32 bits; cpu/pstate64 carries all 64 when needed.
    if f.get("pstate64") is not None:
        return be_int(f["pstate64"])
    return be_int(f["cpsr"])


def _fp_control(f: dict[str, Any]) -> tuple[int, int] | None:
    """(FPCR, FPSR): from cpu/vfp/fpcr_fpsr when sent, else split from the FPSCR."""
    if f.get("fpcr") is not None and f.get("fpsr") is not None:
        return be_int(f["fpcr"]), be_int(f["fpsr"])
    if f.get("fpscr") is None:
        return None
    fpscr = be_int(f["fpscr"])
    return fpscr & FPSCR_FPCR_MASK, fpscr & FPSCR_FPSR_MASK


def _qregs(cpu: CpuSection) -> list[int]:
    """Q0..Q31 (the low 128 bits of each Z register) from cpu/vfp."""
    vfp = cpu.state.subsection("cpu/vfp")
    if vfp is None:
        return []
    out = []
    for n in range(32):
        d = vfp.values(f"env.vfp.zregs[{n}].d")
        if len(d) < 2:
            break
        out.append(unsigned(int(d[1])) << 64 | unsigned(int(d[0])))
    return out


def _sve(cpu: CpuSection) -> dict[str, int]:
    """Z0..Z31, P0..P15 and FFR from cpu/vfp and cpu/sve, as little-endian integers.

    QEMU migrates Z bits 0..1023 only (``cpu/sve/zreg_hi`` holds d[2..15]),
    so for vector lengths over 1024 bits the upper parts are not in the stream.
    """
    sve = cpu.state.subsection("cpu/sve")
    vfp = cpu.state.subsection("cpu/vfp")
    if sve is None or vfp is None:
        return {}
    out: dict[str, int] = {}
    for n, hi in enumerate(sve.values("env.vfp.zregs")):
        words = list(vfp.values(f"env.vfp.zregs[{n}].d")) + list(hi.get("d"))
        out[f"z{n}"] = sum(unsigned(int(w)) << (64 * i) for i, w in enumerate(words))
    for n, pred in enumerate(sve.values("env.vfp.pregs")):
        value = sum(unsigned(int(w)) << (64 * i) for i, w in enumerate(pred.get("p")))
        out["ffr" if n == 16 else f"p{n}"] = value
    return out


def _decode(cpu: CpuSection, arch: str) -> dict[str, Any]:
    f = field_index(cpu.state)
    pstate = _pstate(f)
    cpregs = _cpregs(f)
    out: dict[str, Any] = {}
    if pstate & PSTATE_NRW:
        # AArch32 state: the live registers are env.regs (cpsr_read layout).
        regs = [unsigned(int(v), 32) for v in f["env.regs"]]
        for n, v in enumerate(regs):
            out[f"r{n}"] = v
        out["pc"] = regs[15]
        out["cpsr"] = pstate
        out["mode"] = pstate & 0x1F
        out["spsr"] = unsigned(int(f.get("env.spsr", 0)), 32)
    else:
        x = [unsigned(int(v)) for v in f["env.xregs"]]
        for n in range(31):
            out[f"x{n}"] = x[n]
        el = (pstate >> 2) & 3
        # xregs[31] is the live SP; env.sp_el[] holds the banked copies as of
        # the last EL/SPSel change (aarch64_save_sp), so the one in use is stale.
        out["sp"] = x[31]
        out["pc"] = unsigned(int(f["env.pc"]))
        out["pstate"] = pstate
        out["el"] = el
        sp_el = [unsigned(int(v)) for v in f.get("env.sp_el") or []]
        if sp_el:
            sp_el[el if pstate & PSTATE_SP else 0] = x[31]
        for n, v in enumerate(sp_el):
            out[f"sp_el{n}"] = v
    elr = [unsigned(int(v)) for v in f.get("env.elr_el") or []]
    spsr = [unsigned(int(v)) for v in f.get("env.banked_spsr") or []]
    if arch == "aarch64":
        for n in range(1, len(elr)):
            out[f"ELR_EL{n}"] = elr[n]
        for n, bank in _SPSR_BANK.items():
            if bank < len(spsr):
                out[f"SPSR_EL{n}"] = spsr[bank]
    fp = _fp_control(f)
    if fp is not None:
        out["fpcr"], out["fpsr"] = fp
    qregs = _qregs(cpu)
    if arch == "aarch64":
        for n, q in enumerate(qregs):
            out[f"q{n}"] = q
        out.update(_sve(cpu))
    else:
        # AArch32 D<2n> and D<2n+1> are the halves of Q<n>.
        for n, q in enumerate(qregs[:16]):
            out[f"d{2 * n}"] = q & (1 << 64) - 1
            out[f"d{2 * n + 1}"] = q >> 64
    for kvm_id, value in cpregs:
        name = sysreg_name(kvm_id)
        if name in out:
            name = f"{name}@{kvm_id:#x}"
        out[name] = value
    return out


def _format(r: dict[str, Any], arch: str) -> list[str]:
    lines: list[str] = []
    if "x0" in r:
        cells = [("PC", r["pc"])] + [(f"X{n:02d}", r[f"x{n}"]) for n in range(31)]
        cells.append(("SP", r["sp"]))
        lines += grid(cells, 3, 16)
        lines.append(f"PSTATE={r['pstate']:016x} EL{r['el']}{'h' if r['pstate'] & 1 else 't'}")
        lines += grid([(k.upper(), r[k]) for k in r if k.startswith("sp_el")], 4, 16)
    else:
        lines += grid([(f"R{n:02d}", r[f"r{n}"]) for n in range(16)], 4, 8)
        lines.append(f"CPSR={r['cpsr']:08x} SPSR={r['spsr']:08x}")
    banked = [(k, r[k]) for k in r if k.startswith(("ELR_EL", "SPSR_EL"))]
    lines += grid(banked, 3, 16)
    if "fpcr" in r:
        lines.append(f"FPCR={r['fpcr']:08x} FPSR={r['fpsr']:08x}")
    qs = [(k.upper(), r[k]) for k in r if _numbered(k, "q")]
    for i in range(0, len(qs), 2):
        lines.append(
            " ".join(f"{k}={v >> 64:016x}:{v & (1 << 64) - 1:016x}" for k, v in qs[i : i + 2])
        )
    lines += grid([(k.upper(), r[k]) for k in r if _numbered(k, "d")], 4, 16)
    shown = {"pc", "sp", "pstate", "el", "cpsr", "spsr", "mode", "fpcr", "fpsr", "ffr"}
    rest = [
        (k, v)
        for k, v in r.items()
        if k not in shown
        and not k.startswith(("sp_el", "ELR_EL", "SPSR_EL"))
        and not any(_numbered(k, p) for p in "xrqdzp")
    ]
    if rest:
        lines.append("system registers")
        width = max(len(k) for k, _ in rest)
        lines += [f"  {k:<{width}} {v:016x}" for k, v in rest]
    return lines


def _numbered(name: str, prefix: str) -> bool:
    """Whether ``name`` is ``prefix`` followed by a register number (``x3``, ``q31``)."""
    return name.startswith(prefix) and name[len(prefix) :].isdigit()


register(Arch("arm", ("aarch64", "arm"), _detect, _decode, _format))
