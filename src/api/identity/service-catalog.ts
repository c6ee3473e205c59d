/**
 * The service catalog in every project-scoped token: where clients find each API. All entries
 * point at this server. Service types are the ones clients look up (vbs.md §1.1): identity;
 * volumev2 (gophercloud's NewVBS derives the VBS URL from it), volumev3 and block-storage
 * (cinderclient, openstacksdk), vbs and vbsv2 (otcextensions, Huawei SDKs), compute (the server
 * inventory), data-protect (CSBS), and image: openstackclient's
 * `volume create` builds an image client even without --image, so an empty image service answers.
 */
import { createHash } from 'node:crypto';

const stableId = (s: string) => createHash('sha256').update(s).digest('hex').slice(0, 32);

export function serviceCatalog(base: string, region: string, projectId: string) {
  const entry = (type: string, name: string, url: string) => ({
    id: stableId(`service:${type}`),
    type,
    name,
    endpoints: ['public', 'internal', 'admin'].map((iface) => ({ id: stableId(`${type}:${iface}`), interface: iface, region, region_id: region, url })),
  });
  return [
    entry('identity', 'keystone', `${base}/v3`),
    entry('volumev2', 'cinderv2', `${base}/v2/${projectId}`),
    entry('volumev3', 'cinderv3', `${base}/v3/${projectId}`),
    entry('block-storage', 'cinder', `${base}/v3/${projectId}`),
    entry('vbs', 'vbs', `${base}/v2/${projectId}`),
    entry('vbsv2', 'vbsv2', `${base}/v2/${projectId}`),
    entry('image', 'glance', `${base}/image`),
    entry('compute', 'nova', `${base}/v2.1/${projectId}`),
    entry('data-protect', 'karbor', `${base}/v1/${projectId}`),
  ];
}
