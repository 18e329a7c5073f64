//! The watermark sysctls and their effect (`mm/page_alloc.c`'s `init_per_zone_wmark_min`,
//! `setup_per_zone_wmarks`, `min_free_kbytes_sysctl_handler`,
//! `watermark_scale_factor_sysctl_handler`, `lowmem_reserve_ratio_sysctl_handler`,
//! `zone_pcp_update`).

use crate::errno::Errno;
use crate::mm::mmzone::{self, ZoneType, MAX_NR_ZONES};
use crate::mm::page_alloc::pcp::{
    zone_batchsize, zone_highsize, MIN_PERCPU_PAGELIST_HIGH_FRACTION,
};
use crate::Kernel;
use core::sync::atomic::Ordering::Relaxed;

impl Kernel {
    /// `init_per_zone_wmark_min`: `min_free_kbytes` from lowmem (unless set), then the
    /// watermarks, lowmem reserves and per-CPU list sizes.
    pub(crate) fn init_per_zone_wmark_min(&self) {
        let user = self.tunables.lock().min_free_kbytes;
        let mfk = match user {
            Some(v) => v,
            None => {
                let lowmem_pages: u64 = self
                    .nodes
                    .iter()
                    .flat_map(|n| n.zones.iter())
                    .filter(|z| z.zone_type <= ZoneType::Normal)
                    .map(|z| z.managed())
                    .sum();
                mmzone::calculate_min_free_kbytes(lowmem_pages << (crate::addr::PAGE_SHIFT - 10))
            }
        };
        self.min_free_kbytes.store(mfk, Relaxed);
        self.setup_per_zone_wmarks();
        let ratio = self.tunables.lock().lowmem_reserve_ratio;
        mmzone::setup_per_zone_lowmem_reserve(&self.nodes, &ratio);
    }

    /// `setup_per_zone_wmarks` followed by `zone_pcp_update` for every zone.
    fn setup_per_zone_wmarks(&self) {
        let scale = self.tunables.lock().watermark_scale_factor;
        mmzone::setup_per_zone_wmarks(&self.nodes, self.min_free_kbytes.load(Relaxed), scale);
        let nr_cpus = self.nr_cpus();
        for z in self.nodes.iter().flat_map(|n| n.zones.iter()) {
            let local = (0..nr_cpus)
                .filter(|&c| self.cpus.get(c).node == z.node)
                .count();
            let batch = zone_batchsize(z);
            let high_min = zone_highsize(z, batch, local, nr_cpus, 0);
            let high_max =
                zone_highsize(z, batch, local, nr_cpus, MIN_PERCPU_PAGELIST_HIGH_FRACTION);
            for pcp in z.pcp.iter() {
                let mut p = pcp.lock();
                p.batch = batch;
                p.high_min = high_min;
                p.high_max = high_max;
                p.high = high_min;
            }
        }
        self.refresh_zone_stat_thresholds();
    }

    /// `vm.min_free_kbytes`.
    pub fn min_free_kbytes(&self) -> u64 {
        self.min_free_kbytes.load(Relaxed)
    }

    /// Write `vm.min_free_kbytes` (as `min_free_kbytes_sysctl_handler`): recompute
    /// watermarks. The sysctl is an `int` with a floor of 0 (`proc_dointvec_minmax`,
    /// `extra1 = SYSCTL_ZERO`): `EINVAL` above `INT_MAX`, and 0 is accepted as Linux does.
    pub fn set_min_free_kbytes(&self, kbytes: u64) -> Result<(), Errno> {
        if kbytes > crate::cmdline::INT_MAX as u64 {
            return Err(Errno::EINVAL);
        }
        self.tunables.lock().min_free_kbytes = Some(kbytes);
        self.min_free_kbytes.store(kbytes, Relaxed);
        self.setup_per_zone_wmarks();
        Ok(())
    }

    /// Write `vm.watermark_scale_factor` (1..=3000).
    pub fn set_watermark_scale_factor(&self, f: u64) -> Result<(), Errno> {
        if !(1..=3000).contains(&f) {
            return Err(Errno::EINVAL);
        }
        self.tunables.lock().watermark_scale_factor = f;
        self.setup_per_zone_wmarks();
        Ok(())
    }

    /// Write `vm.lowmem_reserve_ratio` (each an `int`; `EINVAL` above `INT_MAX`).
    pub fn set_lowmem_reserve_ratio(&self, ratio: [u64; MAX_NR_ZONES]) -> Result<(), Errno> {
        if ratio.iter().any(|&r| r > crate::cmdline::INT_MAX as u64) {
            return Err(Errno::EINVAL);
        }
        self.tunables.lock().lowmem_reserve_ratio = ratio;
        mmzone::setup_per_zone_lowmem_reserve(&self.nodes, &ratio);
        Ok(())
    }
}
