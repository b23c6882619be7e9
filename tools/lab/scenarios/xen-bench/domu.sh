# The guest side of 'xen-bench': runs dom0's jobs (the domU end of each measurement).

command -v xenvt >/dev/null || lab_fail "xenvt is not in the domU image"
lab_domu_jobs 300
